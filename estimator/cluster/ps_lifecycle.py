"""Parameter servers that exit by themselves, and the chief's signal that lets them.

In stock TensorFlow a ps task calls ``server.join()`` and never returns, so a
batch job whose training has ended keeps its allocation until the walltime.
Here a ps task serves until one of two things happens:

* the chief calls :func:`notify_chief_done` (after training, and from a
  ``finally`` when it fails): the ps returns 0;
* the chief has vanished: its gRPC port was seen accepting connections and then
  refused them for ``chief_timeout_secs`` (or never opened within
  ``chief_start_timeout_secs``). The ps logs why and returns
  :data:`EXIT_CHIEF_VANISHED`, so the scheduler sees a failed task instead of a
  job that hangs.

The signal travels through TensorFlow itself, so it works across nodes with no
shared filesystem: every ps hosts a one-slot ``FIFOQueue`` with a well-known
``shared_name``; the ps dequeues from it in a local session with a bounded
timeout, checking the chief between tries; the chief connects to each ps's own
gRPC master and enqueues its exit status there. A chief that is restarted
within ``chief_timeout_secs`` (a fault the tests exercise) keeps the ps alive.

A ps ignores SIGTERM and SIGUSR1 (logging them): schedulers send them to
every task of a job before its walltime or on ``scancel --signal``, and the
chief's final save still reads every variable from the ps tasks. The ps ends
right after, when the chief signals or vanishes; SIGKILL still ends it at once.

Deliberately left out: deciding what the chief's status means for the job
(that is the launcher's and the scheduler's business) and any liveness check
of workers (the chief's session already waits for them).

``role`` is a :class:`bwtf.estimator.cluster.roles.ClusterRole`; only its
``task_type``, ``task_id`` and ``cluster_spec`` (a dict of job name to
``host:port`` list) are read.
"""
import os
import signal
import threading
import time

from absl import logging

import bwtf
from bwtf.estimator.cluster.ports import PortInUseError, accepts_connections, ensure_port_free  # noqa: F401

# Distinct from bwtf.ckpt.EXIT_REQUEUE (75) and from TensorFlow's own crashes
# (1, or 128+signal), so a log reader can tell why a ps ended.
EXIT_CHIEF_VANISHED = bwtf.EXIT_CHIEF_VANISHED

_QUEUE_PREFIX = "bwtf_chief_done_ps_"


def _chief_address(cluster_spec):
    """The chief's host:port; worker 0 plays the chief when there is no chief job."""
    if cluster_spec.get("chief"):
        return cluster_spec["chief"][0]
    if cluster_spec.get("worker"):
        return cluster_spec["worker"][0]
    raise ValueError(
        f"cluster spec has neither a 'chief' nor a 'worker' job: {cluster_spec!r}; "
        "a ps task needs a chief to wait for."
    )


def _task_address(role):
    return role.cluster_spec[role.task_type][role.task_id]


def _done_queue(tf, ps_index):
    """The same queue op, in whichever graph builds it, names one queue on the ps."""
    with tf.device(f"/job:ps/task:{ps_index}"):
        return tf.compat.v1.FIFOQueue(
            capacity=1, dtypes=[tf.int32], shapes=[[]], shared_name=f"{_QUEUE_PREFIX}{ps_index}"
        )


def _session_config(tf, ps_index, timeout_ms=0):
    # The filter keeps the session from waiting for every other task of the
    # cluster: only this ps has to be up.
    return tf.compat.v1.ConfigProto(
        device_filters=[f"/job:ps/task:{ps_index}"], operation_timeout_in_ms=timeout_ms
    )


class _ChiefWatch:
    """Tracks when the chief was last reachable and decides when it has vanished."""

    def __init__(self, address, chief_timeout_secs, chief_start_timeout_secs, clock=time.monotonic):
        self.address = address
        self._timeout = chief_timeout_secs
        self._start_timeout = chief_start_timeout_secs
        self._clock = clock
        self._started = clock()
        self.seen = False
        self._last_seen = None

    def vanished_reason(self, reachable):
        """None while the chief may still come (back); else why the ps gives up."""
        now = self._clock()
        if reachable:
            self.seen, self._last_seen = True, now
            return None
        if not self.seen and now - self._started > self._start_timeout:
            return (
                f"the chief at {self.address} never accepted connections within "
                f"{self._start_timeout:.0f}s of this ps starting; check the chief's log"
            )
        if self.seen and now - self._last_seen > self._timeout:
            return (
                f"the chief at {self.address} stopped accepting connections "
                f"{now - self._last_seen:.0f}s ago (limit {self._timeout:.0f}s) without "
                "signalling that training finished; it crashed or was killed"
            )
        return None


def _stay_up_on_stop_signals(task_id):
    def log_and_stay(signum, frame):
        del frame
        logging.warning("ps:%d got %s: staying up for the chief's final save; this ps exits when "
                        "the chief signals it is done or has gone", task_id, signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, log_and_stay)


def serve_parameter_server(
    role, *, chief_timeout_secs=60.0, chief_start_timeout_secs=900.0, poll_secs=2.0
):
    """Runs this ps task's server until the chief is done or gone; returns the exit code.

    Returns 0 once the chief signalled (whatever its own status was: that is
    logged, and the chief reports it itself), or EXIT_CHIEF_VANISHED with an
    error logged once the chief has been unreachable for ``chief_timeout_secs``
    after having been seen, or never came up within ``chief_start_timeout_secs``.
    Raises PortInUseError before starting when the ps's port is taken.
    """
    import tensorflow as tf  # Seconds to import: only the processes that serve pay.

    if role.task_type != "ps":
        raise ValueError(f"serve_parameter_server is for ps tasks, found task type {role.task_type!r}")
    ensure_port_free(_task_address(role))
    _stay_up_on_stop_signals(role.task_id)
    server = tf.distribute.Server(
        tf.train.ClusterSpec(role.cluster_spec), job_name="ps", task_index=role.task_id, start=True
    )
    watch = _ChiefWatch(
        _chief_address(role.cluster_spec), chief_timeout_secs, chief_start_timeout_secs
    )
    logging.info("ps:%d serving at %s; waiting for the chief at %s to finish",
                 role.task_id, _task_address(role), watch.address, extra=bwtf.FILE_ONLY)
    with tf.Graph().as_default():
        dequeue = _done_queue(tf, role.task_id).dequeue()
        options = tf.compat.v1.RunOptions(timeout_in_ms=int(poll_secs * 1000))
        with tf.compat.v1.Session(server.target, config=_session_config(tf, role.task_id)) as sess:
            while True:
                try:
                    chief_status = int(sess.run(dequeue, options=options))
                except tf.errors.DeadlineExceededError:
                    seen_before = watch.seen
                    reason = watch.vanished_reason(accepts_connections(watch.address))
                    if watch.seen and not seen_before:
                        logging.info("ps:%d: the chief at %s is up", role.task_id, watch.address)
                    if reason:
                        logging.error("ps:%d exits with %d: %s", role.task_id, EXIT_CHIEF_VANISHED, reason)
                        return EXIT_CHIEF_VANISHED
                    continue
                logging.info("ps:%d: the chief finished with status %d; this ps exits with 0",
                             role.task_id, chief_status)
                return 0


def notify_chief_done(role, exit_status=0, *, timeout_secs=30.0):
    """Tells every ps task that the chief has finished, so that they exit.

    Called by the chief after training and from a ``finally`` on failure;
    ``exit_status`` is the chief's own exit code, logged by each ps. A ps that
    cannot be reached within ``timeout_secs`` is logged and skipped: it has
    already ended, or will end by itself once it notices the chief is gone.
    Returns the list of ps indices that received the signal.
    """
    import tensorflow as tf

    notified = []
    for ps_index, address in enumerate(role.cluster_spec.get("ps", [])):
        with tf.Graph().as_default():
            enqueue = _done_queue(tf, ps_index).enqueue([tf.constant(int(exit_status), tf.int32)])
            config = _session_config(tf, ps_index, timeout_ms=int(timeout_secs * 1000))
            try:
                with tf.compat.v1.Session(f"grpc://{address}", config=config) as sess:
                    sess.run(enqueue)
                notified.append(ps_index)
            except tf.errors.OpError as error:
                logging.warning("could not signal ps:%d at %s that the chief is done (%s); "
                                "it will exit once it sees the chief gone", ps_index, address,
                                type(error).__name__)
    return notified


def _exit_now(status):
    logging.flush()
    os._exit(status)  # The main thread is blocked inside TensorFlow.


class FinishedProbe:
    """Asks ``finished()`` (the step of the chief's final checkpoint, or None)
    in a thread of its own, so that a stalled filesystem (a hung NFS mount, a
    GCS client retrying) cannot hold up the caller: ``poll`` waits at most
    ``wait_secs`` and returns the last answer. Once a step was seen it stays.
    A ``finished`` that raises counts as None: an unreadable model_dir
    proves nothing."""

    def __init__(self, finished):
        self._finished = finished
        self._thread = None
        self._step = None

    def poll(self, wait_secs):
        if self._step is None and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._ask, name="bwtf-finished-probe", daemon=True)
            self._thread.start()
        if self._thread is not None:
            self._thread.join(wait_secs)
        return self._step

    def _ask(self):
        try:
            step = self._finished()
        except Exception:  # pylint: disable=broad-except
            step = None
        if step is not None:
            self._step = step


def start_worker_watchdog(role, *, chief_timeout_secs=60.0, poll_secs=2.0, finished=None):
    """Ends this worker process once the chief has vanished; returns the daemon thread.

    A worker whose ps restarted rebuilds its session and waits for the chief to
    initialize the variables; if the chief (and with it the ps tasks) has
    already finished, that wait never ends and the batch job hangs to its
    walltime. The watchdog applies the ps rule to workers: the chief seen and
    then unreachable for ``chief_timeout_secs`` ends the process with
    EXIT_CHIEF_VANISHED, logged. A chief restarted within the timeout is fine.

    ``finished()``, when given, returns the step of an intact checkpoint at or
    past ``--train_steps``, or None; it is asked (through a FinishedProbe)
    only while the chief is unreachable, never ending a worker whose chief is
    up. A chief gone after that save has finished the job (a worker that was
    still starting then waits on parameter servers that have exited too), so
    the process ends at once with 0, logged.
    """
    watch = _ChiefWatch(_chief_address(role.cluster_spec), chief_timeout_secs, float("inf"))
    probe = FinishedProbe(finished) if finished is not None else None

    def watch_chief():
        while True:
            reachable = accepts_connections(watch.address)
            step = None if reachable or probe is None else probe.poll(poll_secs)
            if step is not None:
                logging.info("%s:%d ends with 0: the chief has gone and the checkpoint at step %d (at or past "
                             "--train_steps) is intact, so the job is done; nothing is left for this worker "
                             "to train", role.task_type, role.task_id, step)
                _exit_now(0)
            reason = watch.vanished_reason(reachable)
            if reason:
                logging.error("%s:%d exits with %d: %s", role.task_type, role.task_id, EXIT_CHIEF_VANISHED,
                              reason)
                _exit_now(EXIT_CHIEF_VANISHED)
            time.sleep(poll_secs)

    thread = threading.Thread(target=watch_chief, name="bwtf-chief-watchdog", daemon=True)
    thread.start()
    return thread
