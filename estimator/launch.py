"""`bwtf-launch` (``python -m bwtf.estimator.launch``): a whole training cluster on localhost.

    bwtf-launch --num_ps=1 --num_workers=2 --evaluator -- \\
        --model=small_cnn --data_dir=/tmp/tfds --model_dir=/tmp/run --train_steps=300

starts one ``python -m bwtf.estimator.train`` per task (``--num_workers``
counts the chief) on free localhost ports, each with its own ``TF_CONFIG``,
and prints every line of their output prefixed with the task's name
(``[chief]``, ``[worker:0]``, ``[ps:0]``, ``[evaluator]``). It exits with the
chief's status: 0 when training finished, ``bwtf.ckpt.EXIT_REQUEUE`` (75)
when a SIGTERM/SIGINT made the chief save and stop (the first signal is
forwarded to the chief, workers and evaluator; a second one kills everything).
No task outlives the launcher, even a SIGKILLed one. ``--max_restarts=N``
restarts a task that something else killed (the fault tests use it).

Two more modes serve the batch scripts (``scripts/train.sbatch``,
``scripts/train.pbs``), where srun/mpiexec place the tasks and
``bwtf.estimator.cluster`` derives the roles:

    bwtf-launch --print_flags_digest -- <train flags>          # once, in the batch script
    bwtf-launch --task --flags_digest=<digest> -- <train flags> # per task: check, then exec
    bwtf-launch --print_evaluator_tf_config -- <train flags>   # for the evaluator's own step

``--task`` refuses to start when the task's flag files differ from those the
batch script saw, or when its TF_CONFIG port is taken, and then replaces
itself with the training program (so signals and exit codes pass unchanged).
With ``--status_dir`` it instead waits for the program and writes its exit
status to ``<status_dir>/task-<rank>.status`` (rank from the scheduler's
variables): ``srun``/``mpiexec`` report only the highest status of a step, so
the batch script reads these files to tell a chief that stopped for requeue
(75) from workers that a SIGTERM killed; ``--task_log_dir`` then sends the
program's output to ``<task_log_dir>/train-<rank>.log``. In that mode the
wrapper itself survives SIGTERM/SIGINT/SIGUSR1, which the scheduler delivers
to the whole process group, so it can still write the status afterwards.

Deliberately left out: scheduling across machines (that is what Slurm and PBS
are for) and restarting tasks that failed by themselves.
"""
import ctypes
import json
import os
import signal
import subprocess
import sys

from absl import app
from absl import flags

import bwtf
from bwtf.estimator import _flags_digest
from bwtf.estimator import _local_cluster
from bwtf.estimator import _ps_lifecycle

EXIT_USER_ERROR = 2
_PR_SET_PDEATHSIG = 1
# Same order as bwtf.estimator.cluster: the first one set names this task's rank.
_RANK_VARIABLES = ("SLURM_PROCID", "PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "ALPS_APP_PE")

_NUM_PS = flags.DEFINE_integer("num_ps", 1, "Parameter server tasks (0 for collective or none).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "Training tasks, the chief included.")
_EVALUATOR = flags.DEFINE_boolean("evaluator", False, "Also start an evaluator task.")
_DISTRIBUTION = flags.DEFINE_enum(
    "distribution", "ps", ["ps", "collective", "none"],
    "Passed to every task as --distribution; decides the cluster layout.")
_HOST = flags.DEFINE_string("host", "localhost", "Host name written into TF_CONFIG.")
_PORT_BASE = flags.DEFINE_integer(
    "port_base", 0, "First of consecutive ports for the tasks; 0 picks free ports.", lower_bound=0)
_MAX_RESTARTS = flags.DEFINE_integer(
    "max_restarts", 0, "Restarts per task after it was killed by an outside signal.", lower_bound=0)
_SHUTDOWN_GRACE_SECS = flags.DEFINE_float(
    "shutdown_grace_secs", 300.0, "After the chief ends, how long the other tasks may take to "
    "end by themselves (the evaluator evaluates the last checkpoint) before they are killed.",
    lower_bound=0.0)
_LOG_DIR = flags.DEFINE_string(
    "task_log_dir", None, "Also write each task's output to <task_log_dir>/<task>.log (with --task "
    "and --status_dir: only there, as train-<rank>.log).")
_TASK = flags.DEFINE_boolean("task", False, "Run ONE task placed by srun/mpiexec: check, then exec.")
_FLAGS_DIGEST = flags.DEFINE_string("flags_digest", None, "With --task: the digest every task must match.")
_PRINT_FLAGS_DIGEST = flags.DEFINE_boolean(
    "print_flags_digest", False, "Print the digest of the training flags (flag files included) and exit.")
_STATUS_DIR = flags.DEFINE_string(
    "status_dir", None, "With --task: wait for the program and write task-<rank>.status here.")
_PRINT_EVALUATOR_TF_CONFIG = flags.DEFINE_boolean(
    "print_evaluator_tf_config", False,
    "Print the TF_CONFIG for an evaluator started beside a scheduler's training step and exit.")
_TASK_MODULE = flags.DEFINE_string(
    "task_module", "bwtf.estimator.train", "The module each task runs with python -m.")


def _die_with_parent():
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
    try:
        task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
        if task.get("type"):
            return f"{task['type']}:{task.get('index', 0)}"
    except (ValueError, AttributeError):
        pass
    return f"rank {_task_rank()}"


def _own_tf_config_address():
    """This task's host:port from TF_CONFIG, or None (malformed: train.py explains)."""
    try:
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config["task"]
        return config["cluster"][task["type"]][task.get("index", 0)]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _task_rank():
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return os.environ[name]
    return f"pid{os.getpid()}"


def _run_and_record(command, status_dir, log_dir):
    """Runs ``command`` to its end and writes its exit status where the batch script looks."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        # A handler, not SIG_IGN: the child must not inherit an ignored signal.
        signal.signal(signum, lambda *_: None)
    log = None
    if log_dir:  # mpiexec/aprun have no portable per-rank output option; srun does.
        os.makedirs(log_dir, exist_ok=True)
        log = open(os.path.join(log_dir, f"train-{_task_rank()}.log"), "ab")
    child = subprocess.Popen(command, preexec_fn=_die_with_parent, stdout=log, stderr=log)
    while True:
        try:
            status = _local_cluster.exit_status(child.wait())
            break
        except InterruptedError:
            continue
    os.makedirs(status_dir, exist_ok=True)
    path = os.path.join(status_dir, f"task-{_task_rank()}.status")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(f"{status}\n")
    os.replace(path + ".tmp", path)
    return status


def _exec_task(train_argv, expected_digest, module, status_dir, log_dir):
    _die_with_parent()
    if expected_digest:
        _flags_digest.check_flags_digest(train_argv, expected_digest, _task_name())
    address = _own_tf_config_address()
    if address:
        try:
            _ps_lifecycle.ensure_port_free(address)
        except ValueError:
            pass  # A malformed address: the training program's cluster check explains it.
    command = [sys.executable, "-m", module] + list(train_argv)
    if status_dir:
        return _run_and_record(command, status_dir, log_dir)
    os.execv(sys.executable, command)


def _train_argv(argv):
    train_argv = list(argv[1:])
    given = [a for a in train_argv if a.startswith("--distribution=")]
    wanted = f"--distribution={_DISTRIBUTION.value}"
    if given and given[-1] != wanted:
        raise _local_cluster.LaunchError(
            f"the training flags say {given[-1]} but the launcher runs {wanted}; give it once, "
            "to bwtf-launch (before the --)")
    return train_argv if given else train_argv + [wanted]


def _launch(train_argv):
    plan = _local_cluster.LaunchPlan(
        num_ps=_NUM_PS.value, num_workers=_NUM_WORKERS.value, evaluator=_EVALUATOR.value,
        distribution=_DISTRIBUTION.value, host=_HOST.value, port_base=_PORT_BASE.value,
        max_restarts=_MAX_RESTARTS.value, shutdown_grace_secs=_SHUTDOWN_GRACE_SECS.value,
        log_dir=_LOG_DIR.value)
    specs = _local_cluster.plan_tasks(plan)
    digest = _flags_digest.flags_digest(train_argv)
    command = [sys.executable, "-m", "bwtf.estimator.launch", "--task", f"--flags_digest={digest}",
               f"--task_module={_TASK_MODULE.value}", "--"] + train_argv
    if plan.log_dir:
        os.makedirs(plan.log_dir, exist_ok=True)
    output = _local_cluster.PrefixedOutput()
    tasks = [_local_cluster.TaskProcess(spec, command, dict(os.environ), output, plan.log_dir) for spec in specs]
    output.line("launch", f"{len(specs)} task(s): {', '.join(s.name for s in specs)}; flags digest {digest}")
    return _local_cluster.Supervisor(tasks, plan, output).run()


def _evaluator_tf_config(train_argv):
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
    return json.dumps({"cluster": cluster, "task": {"type": "evaluator", "index": 0}})


def main(argv):
    try:
        if _TASK.value:
            return _exec_task(argv[1:], _FLAGS_DIGEST.value, _TASK_MODULE.value, _STATUS_DIR.value,
                              _LOG_DIR.value)
        if _PRINT_EVALUATOR_TF_CONFIG.value:
            print(_evaluator_tf_config(argv[1:]))
            return 0
        if _PRINT_FLAGS_DIGEST.value:
            print(_flags_digest.flags_digest(argv[1:]))
            return 0
        return _launch(_train_argv(argv))
    except (_local_cluster.LaunchError, _flags_digest.FlagsMismatchError,
            _ps_lifecycle.PortInUseError) as error:
        print(f"bwtf-launch: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


def run():
    bwtf.show_program_flags_in_help()
    app.run(main)


if __name__ == "__main__":
    run()
