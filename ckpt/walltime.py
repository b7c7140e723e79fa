"""Remaining walltime of the batch job, from the scheduler's environment.

Sources, first match wins:
  BWTF_WALLTIME_END   epoch seconds at which the job is killed (explicit override)
  SLURM_JOB_END_TIME  epoch seconds (set by Slurm >= 21.08 in the job environment)
  PBS_WALLTIME        walltime in seconds, counted from PBS_JOB_START /
                      PBS_JOBSTART (epoch seconds) or, without them, from the
                      start of this process

``StopConditions`` turns that, and the scheduler's stop signals, into the one
answer every task of a job needs after each step: stop now, and why. The hook
that stops training (the chief's checkpoint hook, a worker's stop hook)
records why with ``record_stop``; ``stop_requested()`` is what the program
reads afterwards to exit with EXIT_REQUEUE (one record per process).

It leaves out querying the scheduler (squeue/qstat): a job step must not
depend on the controller being reachable while it trains.
"""
import os
import signal
import threading
import time

from bwtf.ckpt import errors

_PROCESS_START = time.time()
# Why this process's training stopped ("SIGTERM", "walltime") or None.
_STOPPED = {"reason": None}


def stop_requested():
    """Why a stop hook stopped this process's training ("SIGTERM", "walltime", ...), or None."""
    return _STOPPED["reason"]


def record_stop(reason):
    """Records why training stops; the first reason is kept. ``None`` clears it (a new training run)."""
    if reason is None or _STOPPED["reason"] is None:
        _STOPPED["reason"] = reason


def _number(environ, name, what):
    raw = environ[name].strip()
    try:
        value = float(raw)
    except ValueError:
        value = None
    if value is None or value != value or value < 0:
        raise errors.WalltimeEnvError(
            f"{name}={environ[name]!r} is not {what}; unset it or fix the job script")
    return value


def walltime_end(environ=None):
    """Epoch seconds at which the job will be killed, or None when unknown."""
    environ = os.environ if environ is None else environ
    if environ.get("BWTF_WALLTIME_END", "").strip():
        return _number(environ, "BWTF_WALLTIME_END", "epoch seconds (a number >= 0)")
    if environ.get("SLURM_JOB_END_TIME", "").strip():
        return _number(environ, "SLURM_JOB_END_TIME", "epoch seconds (a number >= 0)")
    if environ.get("PBS_WALLTIME", "").strip():
        seconds = _number(environ, "PBS_WALLTIME", "a walltime in seconds (a number >= 0)")
        start = _PROCESS_START
        for name in ("PBS_JOB_START", "PBS_JOBSTART"):
            if environ.get(name, "").strip():
                start = _number(environ, name, "epoch seconds (a number >= 0)")
                break
        return start + seconds
    return None


def remaining_walltime_secs(environ=None, now=None):
    """Seconds until the job's walltime ends (may be negative), or None."""
    end = walltime_end(environ)
    if end is None:
        return None
    return end - (time.time() if now is None else now)


class StopConditions:
    """Why this task should stop now, if at all: a stop signal came, or the walltime margin is reached.

    The chief's checkpoint hook and the other tasks' stop hooks share it, so
    every task reads the same signals and the same walltime the same way. The
    signal handlers only record the signal: acting inside a handler could
    interrupt a session.run, so the hooks act after the current step.
    """

    def __init__(self, stop_signals, walltime_margin_secs=None, environ=None):
        self._stop_signals = tuple(stop_signals)
        self._margin = walltime_margin_secs
        # Read now so that a malformed scheduler variable fails before training.
        self._walltime_end = walltime_end(environ)
        self._signals_seen = []
        self._previous_handlers = {}

    def install(self):
        """Starts recording the stop signals (Python delivers them to the main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in self._stop_signals:
                self._previous_handlers[signum] = signal.signal(signum, self._record)

    def uninstall(self):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _record(self, signum, frame):
        del frame
        self._signals_seen.append(signal.Signals(signum).name)

    def reason(self):
        """The first stop signal's name ("SIGTERM", ...), "walltime", or None."""
        if self._signals_seen:
            return self._signals_seen[0]
        if (self._walltime_end is not None and self._margin is not None
                and self._walltime_end - time.time() < self._margin):
            return "walltime"
        return None
