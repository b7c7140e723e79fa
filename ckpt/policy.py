"""When checkpoints are written and how many are kept: CheckpointPolicy.

Only configuration lives here; the hooks and retention read it. It leaves out
where checkpoints go (that is the model_dir, passed separately).
"""
import dataclasses
import signal
from typing import Optional, Tuple

import bwtf
from bwtf.ckpt import errors

# EX_TEMPFAIL from sysexits.h: "try again later". The training program exits
# with it after a final save caused by a signal or the walltime, and the
# launch scripts requeue the job when they see it.
EXIT_REQUEUE = bwtf.EXIT_REQUEUE
# EX_CANTCREAT: "cannot create output". A chief fenced off by a newer owner of
# its model_dir (fence.py) exits with it after writing nothing more; it is
# not requeued (the newer owner carries the job on).
EXIT_FENCED = bwtf.EXIT_FENCED

_MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """How often to save, what to keep, and when to stop for the walltime.

    Attributes:
      save_steps: save every this many global steps (None: not by steps).
      save_secs: save every this many seconds (None: not by time).
      keep_last: keep the newest this many intact checkpoints (>= 1).
      keep_every_hours: additionally keep one checkpoint per this many hours.
      max_group_bytes: the chief gathers at most this many bytes of variables
        per write; a single larger variable is written alone.
      walltime_margin_secs: save and stop once less walltime than this remains.
      stop_signals: signals that trigger a final save and a clean stop.
      manifest_extra: (key, value) string pairs written under "extra" in each
        manifest, e.g. the digest of the run record that describes the model.
      staging_dir: local directory (None: the system's temporary directory)
        for an object-store (gs://) checkpoint's local files. A save holds
        only its groups in flight there (about max_group_bytes; each group's
        data file is uploaded once written and emptied) plus the index; a
        restore downloads the whole checkpoint there. A save or restore that
        would not fit fails before writing anything, in one line naming it.
        What a killed writer left there is removed by the next save or restore.
    """

    save_steps: Optional[int] = None
    save_secs: Optional[float] = None
    keep_last: int = 5
    keep_every_hours: Optional[float] = None
    max_group_bytes: int = 256 * _MIB
    walltime_margin_secs: float = 120.0
    stop_signals: Tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)
    manifest_extra: Tuple[Tuple[str, str], ...] = ()
    staging_dir: Optional[str] = None

    def __post_init__(self):
        problems = []
        if self.save_steps is not None and self.save_steps < 1:
            problems.append(f"save_steps must be >= 1 or None, got {self.save_steps}")
        if self.save_secs is not None and self.save_secs <= 0:
            problems.append(f"save_secs must be > 0 or None, got {self.save_secs}")
        if self.keep_last < 1:
            problems.append(f"keep_last must be >= 1, got {self.keep_last}")
        if self.keep_every_hours is not None and self.keep_every_hours <= 0:
            problems.append(
                f"keep_every_hours must be > 0 or None, got {self.keep_every_hours}")
        if self.max_group_bytes < 1:
            problems.append(f"max_group_bytes must be >= 1, got {self.max_group_bytes}")
        if self.walltime_margin_secs < 0:
            problems.append(
                f"walltime_margin_secs must be >= 0, got {self.walltime_margin_secs}")
        if problems:
            raise errors.PolicyError("Invalid CheckpointPolicy: " + "; ".join(problems))
