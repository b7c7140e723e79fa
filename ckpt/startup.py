"""What a training task does with model_dir before its first step.

The chief (``take_ownership``): checks that model_dir is writable, takes
ownership (fence.py, fencing any older writer) and repairs LATEST and TF's
``checkpoint`` file so they name the newest intact checkpoint, all before
Estimator or anything else reads them.

Every task (``install_estimator_step_reader``): Estimator decides whether
training is already done ("Skipping training since max_steps has already
saved") from TF's ``checkpoint`` file, without bwtf's checks, and a worker
may read it before the chief has repaired it. This replaces that decision
with the verified reader: the global step of the newest intact checkpoint.
A model_dir without bwtf checkpoints keeps Estimator's own reading. bwtf's
own runner makes the same decision through ``saved_global_step``.

A worker (``final_checkpoint_step``): whether the chief has already saved the
checkpoint at ``--train_steps``, asked before it starts and while its chief is
unreachable, so a worker that comes too late ends with 0 instead of waiting
for a chief that has finished.
"""
from bwtf.ckpt import commit
from bwtf.ckpt import fence


def take_ownership(model_dir):
    """The chief's first act on model_dir; returns the newest intact CheckpointRef or None."""
    commit.require_writable_model_dir(model_dir)
    fence.acquire(model_dir)
    return commit.repair_pointers(model_dir)


def verified_global_step(model_dir, full=True):
    """The step of the newest intact checkpoint (0 without one)."""
    ref = commit.latest_intact_checkpoint(model_dir, full=full)
    return ref.step if ref is not None else 0


def saved_global_step(model_dir, full=True, stock=None):
    """The step training resumes from: the newest intact bwtf checkpoint's.

    A model_dir without bwtf checkpoints is read by ``stock(model_dir)`` (the
    reader it replaces; by default TF's pointer and the checkpoint's
    ``global_step``), 0 when it holds nothing.
    """
    store = commit.as_storage(model_dir)
    if commit.candidate_names(store):
        return verified_global_step(store, full=full)
    return (stock or _stock_global_step)(model_dir)


def final_checkpoint_step(model_dir, train_steps):
    """The step of an intact checkpoint at or past ``train_steps``, or None.

    Verified in full, as the chief verifies before it decides to skip training
    (the checksums are read once per checkpoint, see commit._VERIFIED), and
    only such checkpoints are looked at, so asking while none exists costs a
    listing. Nothing is logged: a worker asks every few seconds while its
    chief is unreachable. A model_dir that cannot be read (an OSError, or any
    error of a remote filesystem's client) counts as not finished.
    """
    store = commit.as_storage(model_dir)
    try:
        steps = [s for s in map(commit.step_of, commit.candidate_names(store)) if s is not None]
        for step in sorted((s for s in steps if s >= train_steps), reverse=True):
            if commit.check(store, store.path(f"ckpt-{step}"), full=True).intact:
                return step
    except Exception:  # pylint: disable=broad-except
        pass  # gcsfs raises HttpError (not an OSError) for a throttled or failing request.
    return None


def _stock_global_step(model_dir):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    prefix = tf.train.latest_checkpoint(model_dir)
    if prefix is None:
        return 0
    return int(tf.train.load_checkpoint(prefix).get_tensor(tf.compat.v1.GraphKeys.GLOBAL_STEP))


def install_estimator_step_reader(full=True):
    """Makes tf.estimator's step-limit decision use the verified reader.

    ``full=False`` (workers) checks sizes only, so a worker does not read the
    whole checkpoint just to decide whether to start.
    """
    from tensorflow_estimator.python.estimator import estimator as estimator_lib  # pylint: disable=import-outside-toplevel

    stock = getattr(estimator_lib._load_global_step_from_checkpoint_dir,  # pylint: disable=protected-access
                    "bwtf_stock", estimator_lib._load_global_step_from_checkpoint_dir)  # pylint: disable=protected-access

    def load_global_step(checkpoint_dir):
        return saved_global_step(checkpoint_dir, full=full, stock=stock)

    load_global_step.bwtf_stock = stock
    estimator_lib._load_global_step_from_checkpoint_dir = load_global_step  # pylint: disable=protected-access
