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

Each task runs through the per-task wrapper ``python -m bwtf.estimator.task``
(the one the batch scripts use; see ``bwtf.estimator.cluster.batch_task``).
``bwtf-launch --task``, ``--print_flags_digest`` and
``--print_evaluator_tf_config`` are kept as aliases of that program: they
replace this process with it.

Deliberately left out: scheduling across machines (that is what Slurm and PBS
are for) and restarting tasks that failed by themselves.
"""
import os
import sys

from absl import app
from absl import flags

import bwtf
from bwtf.estimator.cluster import flags_digest as _flags_digest
from bwtf.estimator.cluster import local_supervisor as _local_cluster
from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle

EXIT_USER_ERROR = 2
# The per-task wrapper's modes; given to bwtf-launch, they hand over to it.
_TASK_MODES = ("--task", "--print_flags_digest", "--print_evaluator_tf_config")

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
    "task_log_dir", None, "Also write each task's output to <task_log_dir>/<task>.log.")
_TASK_MODULE = flags.DEFINE_string(
    "task_module", "bwtf.estimator.train", "The module each task runs with python -m.")


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
    command = [sys.executable, "-m", "bwtf.estimator.task", f"--flags_digest={digest}",
               f"--task_module={_TASK_MODULE.value}", "--"] + train_argv
    if plan.log_dir:
        os.makedirs(plan.log_dir, exist_ok=True)
    output = _local_cluster.PrefixedOutput()
    tasks = [_local_cluster.TaskProcess(spec, command, dict(os.environ), output, plan.log_dir) for spec in specs]
    output.line("launch", f"{len(specs)} task(s): {', '.join(s.name for s in specs)}; flags digest {digest}")
    return _local_cluster.Supervisor(tasks, plan, output).run()


def main(argv):
    try:
        return _launch(_train_argv(argv))
    except (_local_cluster.LaunchError, _flags_digest.FlagsMismatchError,
            _ps_lifecycle.PortInUseError) as error:
        print(f"bwtf-launch: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


def _hand_over_task_modes(argv):
    """``bwtf-launch --task ...`` (the batch scripts' old spelling) becomes ``python -m bwtf.estimator.task ...``."""
    own = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if not any(arg in _TASK_MODES for arg in own):
        return
    rest = argv[1:]
    if "--task" in own:
        rest = rest[:own.index("--task")] + rest[own.index("--task") + 1:]
    os.execv(sys.executable, [sys.executable, "-m", "bwtf.estimator.task"] + rest)


def run():
    _hand_over_task_modes(sys.argv)
    bwtf.show_program_flags_in_help()
    app.run(main)


if __name__ == "__main__":
    run()
