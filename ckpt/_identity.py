"""Who is writing a checkpoint, and whether that writer is still alive.

A temporary checkpoint directory records its writer (host, pid and the pid's
start time, so a recycled pid is not mistaken for the writer). Retention uses
it to delete the leftovers of dead writers and never those of a live one.
Writers on another host cannot be probed; their directories count as alive
until they are older than FOREIGN_STALE_SECS.
"""
import os
import socket
import time

FOREIGN_STALE_SECS = 24 * 3600
ANONYMOUS_STALE_SECS = 3600


def _start_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after ')' are fixed.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def current():
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid,
            "pid_start": _start_ticks(pid), "time": time.time()}


def is_alive(record, now=None):
    """True unless the writer described by ``record`` is known to be dead."""
    now = time.time() if now is None else now
    if not isinstance(record, dict):
        return False
    if record.get("host") != socket.gethostname():
        written = record.get("time")
        return isinstance(written, (int, float)) and now - written < FOREIGN_STALE_SECS
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    ticks = _start_ticks(pid)
    return ticks is not None and ticks == record.get("pid_start")
