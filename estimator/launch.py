"""Runs a whole training cluster on this machine: ps tasks, the chief, workers and an evaluator.

    bwtf-launch --num_ps=1 --num_workers=2 --evaluator -- \
        --model=small_cnn --data_dir=/tmp/tfds --model_dir=/tmp/run --train_steps=300

The flags before -- are the launcher's own; everything after -- goes unchanged
to every bwtf-train task (put shared settings in a --flagfile there). It starts
one bwtf-train per task (--num_workers counts the chief) on free localhost
ports, each with its own TF_CONFIG, and prints every line of their console
output prefixed with the task's name ([chief], [worker:1], [ps:0],
[evaluator]); each task's full log goes to MODEL_DIR/logs/<role>.log.
The first SIGTERM/SIGINT is forwarded to the chief, workers and evaluator (the
chief saves, then stops); a second one kills everything. No task outlives the
launcher, even a SIGKILLed one. --max_restarts=N restarts a task that
something else killed.

The batch scripts run each task through python -m bwtf.estimator.task;
bwtf-launch --task, --print_flags_digest and --print_evaluator_tf_config are
aliases of that program.

Exit codes: the chief's status:
  0   training finished
  2   bad launcher flags, or a task refused to start (one line)
  75  a SIGTERM/SIGINT made the chief save and stop: requeue me
"""
import os
import sys

from absl import flags

import bwtf
from bwtf import program
from bwtf.estimator.cluster import flags_digest as _flags_digest
from bwtf.estimator.cluster import local_supervisor as _local_cluster

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


def _train_argv(args):
    train_argv = list(args)
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


def main(args):
    return _launch(_train_argv(args))


def _hand_over_task_modes(argv):
    """``bwtf-launch --task ...`` (the batch scripts' old spelling) becomes ``python -m bwtf.estimator.task ...``."""
    own = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if not any(arg in _TASK_MODES for arg in own):
        return
    rest = argv[1:]
    if "--task" in own:
        rest = rest[:own.index("--task")] + rest[own.index("--task") + 1:]
    os.execv(sys.executable, [sys.executable, "-m", "bwtf.estimator.task"] + rest)


PROGRAM = program.Program(
    name="bwtf-launch", doc=__doc__, usage="bwtf-launch [launcher flags] -- [bwtf-train flags]",
    flag_groups=(("Cluster", [_NUM_PS, _NUM_WORKERS, _EVALUATOR, _DISTRIBUTION]),
                 ("Processes", [_HOST, _PORT_BASE, _MAX_RESTARTS, _SHUTDOWN_GRACE_SECS, _LOG_DIR, _TASK_MODULE])),
    args=(0, None))


def run():
    _hand_over_task_modes(sys.argv)
    program.run(main, PROGRAM)


if __name__ == "__main__":
    run()
