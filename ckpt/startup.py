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
A model_dir without bwtf checkpoints keeps Estimator's own reading.
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


def install_estimator_step_reader(full=True):
    """Makes tf.estimator's step-limit decision use the verified reader.

    ``full=False`` (workers) checks sizes only, so a worker does not read the
    whole checkpoint just to decide whether to start.
    """
    from tensorflow_estimator.python.estimator import estimator as estimator_lib  # pylint: disable=import-outside-toplevel

    stock = getattr(estimator_lib._load_global_step_from_checkpoint_dir,  # pylint: disable=protected-access
                    "bwtf_stock", estimator_lib._load_global_step_from_checkpoint_dir)  # pylint: disable=protected-access

    def load_global_step(checkpoint_dir):
        store = commit.as_storage(checkpoint_dir)
        if not commit.candidate_names(store):
            return stock(checkpoint_dir)
        return verified_global_step(store, full=full)

    load_global_step.bwtf_stock = stock
    estimator_lib._load_global_step_from_checkpoint_dir = load_global_step  # pylint: disable=protected-access
