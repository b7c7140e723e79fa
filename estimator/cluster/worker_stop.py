"""A non-chief task's clean stop on the scheduler's stop signals.

Slurm (``--signal``, ``scancel --signal``) and ``bwtf-launch`` deliver SIGTERM
or SIGUSR1 to every task of a job. The chief's ckpt hook saves and stops on
them; a worker with Python's default SIGTERM action would die at once (-15),
and one that ignored them would train on until its ps disappears and then fail.
``WorkerStopHook`` notices the signal (or that the remaining walltime is below
the chief's margin), records why where the chief's hook does
(``ckpt.record_stop``; ``ckpt.stop_requested()`` then tells the program to
exit with ``ckpt.EXIT_REQUEUE`` like the chief) and asks its session to stop
after the current step. The evaluator task has no training session to stop: ``signal_aware_sleep`` gives its polling loop a sleep that
raises ``StopSignal`` once such a signal has arrived (an evaluation under way
finishes and is recorded first).

Deliberately left out: saving (only the chief saves, through ``bwtf.ckpt``)
and collective training, where every worker must run the same steps: there a
worker stopping one step before the chief would leave the chief's all-reduce
waiting.
"""
import signal
import time

import tensorflow as tf
from absl import logging

from bwtf import ckpt

_POLL_SECS = 0.5


class StopSignal(Exception):
    """A stop signal arrived while the evaluator waited for a checkpoint."""


def signal_aware_sleep(stop_signals):
    """Installs handlers for ``stop_signals``; returns sleep(seconds) raising StopSignal once one came."""
    seen = []
    for signum in stop_signals:
        signal.signal(signum, lambda number, frame: seen.append(signal.Signals(number).name))

    def sleep(seconds):
        deadline = time.monotonic() + seconds
        while not seen and time.monotonic() < deadline:
            time.sleep(min(_POLL_SECS, max(deadline - time.monotonic(), 0.0)))
        if seen:
            raise StopSignal(seen[0])

    return sleep


class WorkerStopHook(tf.compat.v1.train.SessionRunHook):
    """Requests a stop after the step during which one of ``stop_signals`` arrived,
    or once less than ``walltime_margin_secs`` of the job's walltime is left."""

    def __init__(self, stop_signals, walltime_margin_secs=None, environ=None):
        # The chief's hook reads the same conditions (bwtf.ckpt), so every task
        # of the job stops for the same reasons.
        self._stop = ckpt.StopConditions(stop_signals, walltime_margin_secs, environ)

    def begin(self):
        ckpt.record_stop(None)
        self._stop.install()

    def after_run(self, run_context, run_values):
        reason = self._stop.reason()
        if reason is not None and ckpt.stop_requested() is None:
            ckpt.record_stop(reason)
            logging.warning("worker stops after this step: %s (only the chief saves)", reason)
            run_context.request_stop()

    def end(self, session):
        del session
        self._stop.uninstall()
