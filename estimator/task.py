"""One task of a batch job, as srun/mpiexec start it: checked, then replaced by bwtf-train.

The batch scripts (``scripts/train.sbatch``, ``scripts/train.pbs``) let
srun/mpiexec place the tasks and ``bwtf.estimator.cluster.roles`` derive each
one's role from the scheduler's variables. They call this program three ways::

    python -m bwtf.estimator.task --print_flags_digest -- <train flags>         # once, in the script
    python -m bwtf.estimator.task --flags_digest=<digest> -- <train flags>      # per task: check, then exec
    python -m bwtf.estimator.task --print_evaluator_tf_config -- <train flags>  # the evaluator's own step

A task refuses to start when its flag files differ from those the batch script
saw, or when its TF_CONFIG port is taken, and then replaces itself with the
training program (so signals and exit codes pass unchanged). With
``--status_dir`` it instead waits for the program and writes its exit status
to ``<status_dir>/task-<rank>.status``; ``--task_log_dir`` then sends the
program's output to ``<task_log_dir>/train-<rank>.log``, and
``--chief_status_file`` stops the task (status 70) once the chief has
failed, so that a chief failing at startup ends the whole job. See
``bwtf.estimator.cluster.batch_task`` for why. ``bwtf-launch --task`` is an
alias of this program.

Exit codes: the training program's own; 2 when the task refuses to start.
"""

from absl import flags

from bwtf import program
from bwtf.estimator.cluster import batch_task
from bwtf.estimator.cluster import flags_digest as _flags_digest

_FLAGS_DIGEST = flags.DEFINE_string("flags_digest", None, "The digest every task must match.")
_PRINT_FLAGS_DIGEST = flags.DEFINE_boolean(
    "print_flags_digest", False, "Print the digest of the training flags (flag files included) and exit.")
_STATUS_DIR = flags.DEFINE_string(
    "status_dir", None, "Wait for the program and write task-<rank>.status here.")
_LOG_DIR = flags.DEFINE_string(
    "task_log_dir", None, "With --status_dir: write the program's output to <task_log_dir>/train-<rank>.log.")
_PRINT_EVALUATOR_TF_CONFIG = flags.DEFINE_boolean(
    "print_evaluator_tf_config", False,
    "Print the TF_CONFIG for an evaluator started beside a scheduler's training step and exit.")
_CHIEF_STATUS_FILE = flags.DEFINE_string(
    "chief_status_file", None, "With --status_dir: the chief's status file; once it says the chief failed, "
    "stop this task (status 70) instead of waiting for a chief that will not come.")
_TASK_MODULE = flags.DEFINE_string(
    "task_module", "bwtf.estimator.train", "The module the task runs with python -m.")


def main(args):
    if _PRINT_EVALUATOR_TF_CONFIG.value:
        print(batch_task.evaluator_tf_config(args))
        return 0
    if _PRINT_FLAGS_DIGEST.value:
        print(_flags_digest.flags_digest(args))
        return 0
    return batch_task.exec_task(args, _FLAGS_DIGEST.value, _TASK_MODULE.value, _STATUS_DIR.value, _LOG_DIR.value,
                                _CHIEF_STATUS_FILE.value)


PROGRAM = program.Program(
    name="bwtf-launch", doc=__doc__, usage="python -m bwtf.estimator.task [flags] -- [bwtf-train flags]",
    flag_groups=(("Task", [_FLAGS_DIGEST, _STATUS_DIR, _LOG_DIR, _CHIEF_STATUS_FILE, _TASK_MODULE]),
                 ("Batch script", [_PRINT_FLAGS_DIGEST, _PRINT_EVALUATOR_TF_CONFIG])),
    args=(0, None))


def run():
    program.run(main, PROGRAM)


if __name__ == "__main__":
    run()
