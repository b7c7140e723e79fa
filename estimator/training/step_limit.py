"""``--train_steps=N`` ends at global step N, however many workers race for it.

Estimator stops each worker with a StopAtStepHook, which looks at the global
step only *after* a run. With asynchronous ps training every worker's
``train_op`` applies its gradients and adds 1 to the global step on its own,
so the workers still running when the step reaches N pushed it past N before
the chief's final save (``--train_steps=1500`` ended with ``ckpt-1502``).

``StepLimitedOptimizer(optimizer, last_step)`` wraps the optimizer so that an
update applies only if it can claim a step: once its gradients are computed,
the worker takes a lock (a ``tf.CriticalSection`` whose mutex lives on the
global step's own ps task, so every worker's graph shares it), reads the
global step and, only if it is below ``last_step``, adds 1; it then applies
its gradients if (and only if) it claimed a step. The step therefore never
exceeds ``last_step``, at most ``last_step`` updates are ever applied (a slow
worker whose gradients arrive after the limit applies nothing), and the run
that finds the limit reached is a no-op after which the worker's
StopAtStepHook stops it. The chief's final save then holds step N.

The lock guards a read and an assignment of one scalar, not the gradient
update, so workers still apply their updates in parallel; everything it
guards runs on the ps that holds it, so a worker that dies or is stopped
(SIGSTOP) never holds it. bwtf's model_fn builds the claim and the update
behind the worker's update gate (``bwtf.ckpt.gated_update``), so a
checkpoint's snapshot never sees a step claimed but not yet applied.
Batch-norm moving statistics are updated by the forward pass
(``UPDATE_OPS``), not by the optimizer, so a worker's last, unclaimed run
still moves them.

Under ``--sync_replicas`` (``serial=True``) the wrapper sits inside the
SyncReplicasOptimizer (and inside its update gate, see
``training.sync_replicas``), whose chief applies every aggregated update from
one queue-runner thread: nothing races, so there is no claim. An update applies
only while the step is below ``last_step``, and the step is added after the
update as stock TensorFlow does, so a worker that sees step N (and stops)
sees update N whole. Left out:
the collective strategy (every replica steps in lockstep and stops together)
and a single process (nothing races), which use the optimizer as it is.
"""
import tensorflow as tf

_LOCK_NAME = "bwtf_step_limit"


def _claim_step(global_step, last_step):
    """A bool tensor: this run took a step (the global step was below ``last_step``
    and is now one more); one claim at a time across the cluster."""
    def claim():
        current = tf.identity(global_step.read_value() if hasattr(global_step, "read_value")
                              else global_step)
        below = tf.less(current, tf.cast(last_step, current.dtype))
        updated = tf.where(below, current + 1, current)
        with tf.control_dependencies([tf.compat.v1.assign(global_step, updated)]):
            return tf.identity(below)

    # Everything the lock guards runs on the ps that holds it: a worker that
    # dies or stalls (SIGSTOP) after taking the lock cannot hold it.
    with tf.compat.v1.device(global_step.device):
        section = tf.CriticalSection(name="step_limit", shared_name=_LOCK_NAME)
        return section.execute(claim)


class StepLimitedOptimizer(tf.compat.v1.train.Optimizer):
    """Delegates to ``optimizer``, but applies an update only if it claims a
    global step below ``last_step`` (see the module docstring)."""

    def __init__(self, optimizer, last_step, serial=False, name="StepLimited"):
        super().__init__(use_locking=False, name=name)
        if last_step < 1:
            raise ValueError(f"last_step must be at least 1, got {last_step}")
        self._optimizer = optimizer
        self._last_step = int(last_step)
        self._serial = serial  # one applier (the sync chief's queue runner): no claim

    def compute_gradients(self, *args, **kwargs):
        return self._optimizer.compute_gradients(*args, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        if global_step is None:
            return self._optimizer.apply_gradients(grads_and_vars, name=name)
        grads_and_vars = list(grads_and_vars)
        if self._serial:
            return self._apply_below_limit(grads_and_vars, global_step, name)

        def apply():
            with tf.control_dependencies([self._optimizer.apply_gradients(grads_and_vars, name=name)]):
                return tf.constant(True)

        # The lock and the branch stay out of an XLA cluster (--xla compiles
        # the gradients); the claim waits for the gradients, so a step is
        # never held by a worker still computing and the update follows closely.
        with tf.xla.experimental.jit_scope(compile_ops=False):
            with tf.control_dependencies([g for g, _ in grads_and_vars if g is not None]):
                claimed = _claim_step(global_step, self._last_step)
            return tf.compat.v1.cond(claimed, apply, lambda: tf.constant(False), name="apply_if_claimed").op

    def _apply_below_limit(self, grads_and_vars, global_step, name):
        """The update, with the step added after it, only while the step is below the limit."""
        def apply():
            with tf.control_dependencies([self._optimizer.apply_gradients(grads_and_vars, global_step, name=name)]):
                return tf.constant(True)

        with tf.xla.experimental.jit_scope(compile_ops=False), tf.compat.v1.device(global_step.device):
            current = global_step.read_value() if hasattr(global_step, "read_value") else tf.identity(global_step)
            below = tf.less(current, tf.cast(self._last_step, current.dtype))
            return tf.compat.v1.cond(below, apply, lambda: tf.constant(False), name="apply_below_limit").op

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self):
        return self._optimizer.variables()
