"""``--sync_replicas``: the aggregated update behind the update gate, and the chief's prompt end.

SyncReplicasOptimizer's chief queue runner takes the aggregated gradients
from ConditionalAccumulators placed beside their variables (on the ps), then
calls its inner optimizer's ``apply_gradients`` under the global step's
device: the variable updates and the step increment. Left alone, a
checkpoint snapshot could land in the middle of that update (some variables
at step s, others at s + 1). ``GatedApplyOptimizer`` is the inner optimizer
SyncReplicasOptimizer sees: its ``apply_gradients`` builds the update with
``bwtf.ckpt.gated_update``, so the gate is taken once every aggregated
gradient has been taken (they already sit on their variables' ps) and held
only for the update, which runs on the ps alone (a frozen chief cannot hold
the gate for long); the chief's snapshot takes every gate, so it holds whole
updates only. Everything else SyncReplicasOptimizer calls on its inner
optimizer (compute_gradients, get_slot, get_slot_names, variables) is
delegated. bwtf's model_fn puts it directly inside SyncReplicasOptimizer,
around the loss scaling and the step limit, so both apply inside the gate.

The chief's prompt end:

SyncReplicasOptimizer's chief queue runner sits in the gradient
accumulators' ``take_grad``, waiting for the workers' next gradients. When
training ends no gradients come, and nothing cancels that op: closing the
token queue (the queue runner's own cancel op) does not reach it. The
MonitoredSession then waits its fixed ``stop_grace_period_secs`` (120 s, not
settable through the Estimator) for the thread before it closes the session.

``ReleaseQueueRunnersHook`` closes the session as soon as the session's
coordinator is asked to stop, which happens only after every hook's ``end()``
(so after the final checkpoint). Closing a session cancels its pending steps,
the blocked ``take_grad`` among them, so the queue runner thread ends at once
and the coordinator's join returns. The MonitoredSession closes the session
again afterwards; a second close does nothing.

The close cannot leave the update gate held: a step cancelled inside its
update drops its lock, which releases the gate (it comes after the final
save, so no checkpoint sees that step).

Deliberately left out: the workers. Their token dequeue fails once the chief's
queue runner closes the token queue, and they end through that.
"""
import threading

import tensorflow as tf
from absl import logging

from bwtf import ckpt


class GatedApplyOptimizer(tf.compat.v1.train.Optimizer):
    """Delegates to ``optimizer``; its updates run behind the update gate ``stripe``.

    ``after``: tensors the gate also waits for besides the gradients (the
    learning rate: computed on the chief, it must reach the ps before the gate
    is taken, so nothing the gated part waits for comes from another task).
    See the module docstring.
    """

    def __init__(self, optimizer, stripe=0, after=(), name="Gated"):
        super().__init__(use_locking=False, name=name)
        self._optimizer = optimizer
        self._stripe = stripe
        self._after = [t for t in after if isinstance(t, (tf.Tensor, tf.Operation))]

    def compute_gradients(self, *args, **kwargs):
        return self._optimizer.compute_gradients(*args, **kwargs)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        grads_and_vars = list(grads_and_vars)  # SyncReplicasOptimizer passes a zip
        grads = [g for g, _ in grads_and_vars if g is not None]
        return ckpt.gated_update(
            lambda: self._optimizer.apply_gradients(grads_and_vars, global_step=global_step, name=name),
            stripe=self._stripe, after=grads + self._after)

    def get_slot(self, *args, **kwargs):
        return self._optimizer.get_slot(*args, **kwargs)

    def get_slot_names(self, *args, **kwargs):
        return self._optimizer.get_slot_names(*args, **kwargs)

    def variables(self):
        return self._optimizer.variables()


class ReleaseQueueRunnersHook(tf.compat.v1.train.SessionRunHook):
    """On the chief: closes the session once its coordinator stops (see the module docstring)."""

    def after_create_session(self, session, coord):
        def close_when_stopped():
            coord.wait_for_stop()
            logging.info("training session stopping: closing it so the sync-replicas queue "
                         "runner's pending take_grad is cancelled")
            session.close()

        threading.Thread(target=close_when_stopped, name="bwtf-release-queue-runners", daemon=True).start()
