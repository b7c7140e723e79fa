"""The batch scripts' side of a job: one task that srun/mpiexec placed, checked, then run.

``scripts/train.sbatch`` and ``scripts/train.pbs`` (through ``python -m
bwtf.estimator.task``, the program over this module) compute a digest of the
training flags once, then start one wrapper per task. The wrapper:

* refuses to start when the task's flag files differ from those the batch
  script saw (``flags_digest``), or when its TF_CONFIG port is taken;
* asks Linux to kill it (and what it execs) when its parent dies
  (``PR_SET_PDEATHSIG``), so no task outlives its launcher;
* replaces itself with the training program (so signals and exit codes pass
  unchanged), or, with a status folder, waits for the program and writes its
  exit status to ``<status_dir>/task-<rank>.status`` (rank from the
  scheduler's variables): ``srun``/``mpiexec`` report only the highest status
  of a step, so the batch script reads these files to tell a chief that
  stopped for requeue (75) from workers that a SIGTERM killed. In that mode
  the wrapper survives SIGTERM/SIGINT/SIGUSR1, which the scheduler delivers to
  the whole process group, so it can still write the status afterwards;
* given the chief's status file, stops its task (SIGKILL, status 70, one line
  in the task's log) once the chief has failed: a chief that fails before
  training (a bad flag) then ends the whole job within seconds, instead of a
  ps waiting 900 s for it and holding every node.

``evaluator_tf_config`` is the TF_CONFIG of an evaluator that the batch script
starts in a step of its own.

Deliberately left out: deriving the roles (``roles`` does that from the
scheduler's variables) and the localhost launcher (``local_supervisor``).
"""
import ctypes
import os
import signal
import subprocess
import sys

import bwtf
from bwtf.estimator.cluster import flags_digest as _flags_digest
from bwtf.estimator.cluster import local_supervisor as _local_cluster
from bwtf.estimator.cluster import ports
from bwtf.estimator.cluster import roles
from bwtf.estimator.cluster import tf_config

_PR_SET_PDEATHSIG = 1
_CHIEF_POLL_SECS = 1.0


def die_with_parent():
    """Asks Linux to SIGKILL this process (and what it execs) when its parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return  # Not Linux: the launcher's own kill-on-exit still applies.
    if os.getppid() == 1:  # The parent died before prctl took effect.
        os._exit(128 + signal.SIGKILL)


def _task_name():
    """'chief:0' from TF_CONFIG, else 'rank 3' from the scheduler (for error messages)."""
    task = tf_config.own_task(os.environ.get("TF_CONFIG"))
    return f"{task[0]}:{task[1]}" if task else f"rank {_task_rank()}"


def _own_tf_config_address():
    """This task's host:port from TF_CONFIG, or None (malformed: bwtf-train explains)."""
    task = tf_config.own_task(os.environ.get("TF_CONFIG"))
    return task[2] if task else None


def _task_rank():
    for name in roles.SCHEDULER_RANK_VARIABLES:
        if roles.is_rank_number(os.environ.get(name, "")):
            return os.environ[name].strip()
    return f"pid{os.getpid()}"


def chief_failure(chief_status_file):
    """The chief's exit status once its file says it failed; None while it runs, or when it
    finished (0) or stopped for requeue (75)."""
    try:
        with open(chief_status_file, encoding="utf-8") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    if not text.isdigit() or int(text) in (0, bwtf.EXIT_REQUEUE):
        return None
    return int(text)


def _wait_watching_the_chief(child, chief_status_file, say):
    """The child's exit status; once the chief has failed, SIGKILLs it and returns 70.

    Only the chief writes checkpoints, so nothing is lost by killing the
    others; without this a ps would wait for a chief that never comes, and a
    worker for a chief that never initializes the variables.
    """
    while True:
        try:
            return _local_cluster.exit_status(child.wait(timeout=_CHIEF_POLL_SECS))
        except InterruptedError:
            continue
        except subprocess.TimeoutExpired:
            failed = chief_failure(chief_status_file) if chief_status_file else None
            if failed is None:
                continue
            say(f"bwtf-launch: rank {_task_rank()} ({_task_name()}): the chief (rank 0) failed with status "
                f"{failed}; stopping this task, which exits with {bwtf.EXIT_CHIEF_VANISHED}")
            child.kill()
            child.wait()
            return bwtf.EXIT_CHIEF_VANISHED


def _run_and_record(command, status_dir, log_dir, chief_status_file=None):
    """Runs ``command`` to its end and writes its exit status where the batch script looks."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        # A handler, not SIG_IGN: the child must not inherit an ignored signal.
        signal.signal(signum, lambda *_: None)
    log = None
    if log_dir:  # mpiexec/aprun have no portable per-rank output option; srun does.
        os.makedirs(log_dir, exist_ok=True)
        log = open(os.path.join(log_dir, f"train-{_task_rank()}.log"), "ab")

    def say(line):
        stream = log or sys.stderr.buffer
        stream.write(line.encode("utf-8") + b"\n")
        stream.flush()

    child = subprocess.Popen(command, preexec_fn=die_with_parent, stdout=log, stderr=log)
    status = _wait_watching_the_chief(child, chief_status_file, say)
    bwtf.write_atomically(os.path.join(status_dir, f"task-{_task_rank()}.status"), f"{status}\n",
                          root=status_dir)
    return status


def exec_task(train_argv, expected_digest, module, status_dir, log_dir, chief_status_file=None):
    """Checks this task, then execs ``python -m module train_argv`` (or runs it, with ``status_dir``).

    With ``chief_status_file`` (the chief's status file, which its own wrapper
    writes) the task is stopped within seconds, with status 70, once the chief
    has failed.
    """
    die_with_parent()
    if expected_digest:
        _flags_digest.check_flags_digest(train_argv, expected_digest, _task_name())
    address = _own_tf_config_address()
    if address:
        try:
            ports.ensure_port_free(address)
        except ValueError:
            pass  # A malformed address: the training program's cluster check explains it.
    command = [sys.executable, "-m", module] + list(train_argv)
    if status_dir:
        return _run_and_record(command, status_dir, log_dir, chief_status_file)
    os.execv(sys.executable, command)


def evaluator_tf_config(train_argv):
    """TF_CONFIG for an evaluator that srun/mpiexec start in a step of its own.

    The evaluator reads checkpoints from --model_dir and contacts no other
    task, but bwtf-train checks that its cluster has the shape the
    distribution needs (ps tasks for --distribution=ps), so the placeholder
    addresses (port 1, never contacted) follow the training flags.
    """
    distribution = "ps"
    for arg in _flags_digest.expanded_args(train_argv):
        if arg.startswith("--distribution="):
            distribution = arg.split("=", 1)[1]
    cluster = {"chief": ["localhost:1"]}
    if distribution == "ps":
        cluster["ps"] = ["localhost:2"]
    return tf_config.build(cluster, "evaluator", 0)
