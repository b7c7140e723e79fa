"""Failpoints: let crash tests kill the checkpoint writer at a named stage.

``BWTF_CKPT_FAILPOINT=<stage>[:<n>]`` makes the process SIGKILL itself the
n-th time (default 1st) it reaches ``<stage>``. A kill at a chosen stage is
what makes the crash-consistency test deterministic instead of lucky. The
variable is read on every call so tests can set it per process.
"""
import collections
import os
import signal

from bwtf.ckpt import errors

ENV_VAR = "BWTF_CKPT_FAILPOINT"

# The stages, in the order a save reaches them.
STAGES = (
    "snapshot_taken",     # every variable copied into its snapshot buffer
    "group_uploaded",     # object stores: one group's data file uploaded (per group)
    "group_written",      # after one group's shard (repeated per group)
    "merged",             # after MergeV2Checkpoints, before fsync
    "synced",             # files and directory fsynced, no manifest yet
    "manifest_partial",   # half of MANIFEST.json written
    "manifest_written",   # manifest complete, directory not yet renamed
    "committed",          # renamed to ckpt-N (or marker written)
    "pointer_partial",    # temporary pointer file half written
    "pointer_written",    # LATEST replaced, TF state file not yet
    "state_written",      # TF state file replaced, retention not yet run
)

_hits = collections.Counter()


def _parse(value):
    stage, _, count = value.partition(":")
    if stage not in STAGES:
        raise errors.CheckpointError(
            f"{ENV_VAR}={value!r}: unknown stage {stage!r}; expected one of "
            f"{', '.join(STAGES)}, optionally followed by ':<n>' (n >= 1)")
    try:
        nth = int(count) if count else 1
    except ValueError:
        nth = 0
    if nth < 1:
        raise errors.CheckpointError(
            f"{ENV_VAR}={value!r}: the count after ':' must be an integer >= 1")
    return stage, nth


def check_config():
    """Raises CheckpointError now if the failpoint variable is malformed."""
    value = os.environ.get(ENV_VAR)
    if value:
        _parse(value)


def reach(stage):
    """Called by the writer at ``stage``; dies there if the failpoint says so."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return
    wanted, nth = _parse(value)
    if stage != wanted:
        return
    _hits[stage] += 1
    if _hits[stage] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
