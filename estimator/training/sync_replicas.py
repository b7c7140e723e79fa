"""The chief's prompt end under ``--sync_replicas``.

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

Deliberately left out: the workers. Their token dequeue fails once the chief's
queue runner closes the token queue, and they end through that.
"""
import threading

import tensorflow as tf
from absl import logging


class ReleaseQueueRunnersHook(tf.compat.v1.train.SessionRunHook):
    """On the chief: closes the session once its coordinator stops (see the module docstring)."""

    def after_create_session(self, session, coord):
        def close_when_stopped():
            coord.wait_for_stop()
            logging.info("training session stopping: closing it so the sync-replicas queue "
                         "runner's pending take_grad is cancelled")
            session.close()

        threading.Thread(target=close_when_stopped, name="bwtf-release-queue-runners", daemon=True).start()
