"""Remaining walltime of the batch job, from the scheduler's environment.

Sources, first match wins:
  BWTF_WALLTIME_END   epoch seconds at which the job is killed (explicit override)
  SLURM_JOB_END_TIME  epoch seconds (set by Slurm >= 21.08 in the job environment)
  PBS_WALLTIME        walltime in seconds, counted from PBS_JOB_START /
                      PBS_JOBSTART (epoch seconds) or, without them, from the
                      start of this process

It leaves out querying the scheduler (squeue/qstat): a job step must not
depend on the controller being reachable while it trains.
"""
import os
import time

from bwtf.ckpt import errors

_PROCESS_START = time.time()


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
