"""One task of a training job: a ps, the chief, a worker or the evaluator.

Start it once per task, on every node, with the same flags (``--flagfile=job.flags``
keeps them in one file); ``bwtf-launch`` does that on one machine, and
``scripts/train.sbatch`` / ``scripts/train.pbs`` under Slurm and PBS::

    # one process (synthetic data, a CPU smoke test)
    bwtf-train --model=small_cnn --use_synthetic_data --model_dir=/tmp/run \
        --train_steps=100 --batch_size=32 --distribution=none

    # 1 ps + chief + 1 worker on localhost, classic flags (worker 0 is the chief)
    bwtf-train --flagfile=job.flags --job_name=ps --task_index=0 \
        --ps_hosts=localhost:2222 --worker_hosts=localhost:2223,localhost:2224 &
    ...same with --job_name=worker --task_index=0 and --task_index=1

The role comes from, first match wins: the classic flags; TF_CONFIG; Slurm
(srun) or PBS (mpiexec/aprun) variables, where --num_ps says how many tasks
serve parameters; else one local process. ps tasks serve variables until the
chief is done; the chief and workers train; the evaluator evaluates each new
intact checkpoint once and stops after the one at --train_steps.
--distribution=ps (the default) keeps the variables on the ps tasks, updated
asynchronously or, with --sync_replicas, synchronously; collective uses
MultiWorkerMirroredStrategy (all-reduce, no ps); none (or any single-task job)
trains in this process and evaluates every --eval_every_steps.

GPUs: one GPU per chief/worker process, none for the ps tasks and the
evaluator. Give every task of a node the node's GPUs (sbatch --gres=gpu:4, or
BWTF_GPUS_PER_NODE=4); each task keeps the one that matches its place among
the node's training tasks and logs it with its node (see
bwtf.estimator.cluster.roles.visible_devices); install bwtf[gpu].
--precision=bf16 suits A100/H100; fp16 (with dynamic loss scaling) suits V100;
--xla compiles the model on either. Under --distribution=collective a worker
that sees several GPUs is refused (exit 2): the strategy would make one replica
per GPU, and the learning rate and input sharding count one per worker.

Signals: SIGTERM, SIGUSR1 and SIGINT (Ctrl-C) all mean "save at the current
step and exit 75"; a SIGINT is turned into a SIGTERM, so no task ever ends in
a KeyboardInterrupt traceback.

The console shows the resolved cluster, the start summary, progress, checkpoint
commits, evaluations and the final summary; the task's full log (TensorFlow's
included) goes to MODEL_DIR/logs/<role>.log, or $BWTF_LOG_DIR/<role>.log when
the batch job sets it. -v 0 shows the full log on the console instead.

Before its first checkpoint the chief writes the run record ``<model_dir>/run.json``
(model, graph settings, dataset and class list, flags, cluster); bwtf-eval,
bwtf-export and ``bwtf-ckpt inspect`` need only ``--model_dir`` because of it, and
a restarted chief whose flags would change the graph is refused naming both
values. ``--warm_start_from=M_OR_CKPT`` fine-tunes: a new run starts at step 0
from another run's verified checkpoint (see ``training.warm_start``).

Exit codes:
  0   done
  1   an evaluator stopped after --eval_timeout_secs without the final checkpoint
  2   bad flags, data, cluster or checkpoint (one line; nothing was started)
  70  a ps or worker whose chief vanished (a worker after 60 s in a ps cluster, 10 s under
      collective, where nothing can go on without it)
  73  the chief was fenced off by a newer chief of the same --model_dir
  75  stopped by a signal or the walltime after a final checkpoint: requeue me
"""
import os
import shutil
import signal

from absl import flags

import bwtf
from bwtf import program
from bwtf.estimator import _flags
from bwtf.estimator.training import task

_MODEL = _flags.define_model_flags()
_DATA = _flags.define_data_flags()
_TRAIN = _flags.define_train_flags()
_CKPT = _flags.define_checkpoint_flags()
_CLUSTER = _flags.define_cluster_flags()

_WARM_START_FROM = flags.DEFINE_string(
    "warm_start_from", None, "Fine-tune: start a new run (step 0, fresh optimizer state) from another "
    "run's model_dir, ckpt-<N> directory or checkpoint prefix; variables restored by name and shape, "
    "the classifier head re-initialized when the class count differs.")

# The evaluator's own flag; bwtf-eval has the same one (defined only when it runs).
_EVAL_TIMEOUT = flags.DEFINE_float(
    "eval_timeout_secs", task.DEFAULT_EVAL_TIMEOUT_SECS, "evaluator task: stop (exit 1) after this "
    "long without a new checkpoint before the one at --train_steps.", lower_bound=0.0)


def flag_values():
    """The parsed flags, grouped as ``training.task.run_task`` takes them."""
    train = dict(_TRAIN.values(), eval_timeout_secs=_EVAL_TIMEOUT.value,
                 warm_start_from=_WARM_START_FROM.value)
    return {"model": _MODEL.values(), "data": _DATA.values(), "train": train,
            "ckpt": _CKPT.values(), "cluster": _CLUSTER.values()}


def _log_file(role, model_dir):
    """This task's full log: one file per role (chief.log, worker-1.log, ps-0.log, evaluator.log)."""
    name = role.task_type if role.task_type in ("chief", "evaluator") else f"{role.task_type}-{role.task_id}"
    program.log_to_file_in(model_dir, name)


def _sigint_means_sigterm():
    """Ctrl-C (or srun's SIGINT) then does whatever SIGTERM does at that moment: a final save and 75
    while training, the ps's "stay up for the chief", a quiet end before training starts."""
    signal.signal(signal.SIGINT, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))


def _remove_if_only_logs(model_dir):
    """Bad input leaves nothing behind: a model_dir this task created holds only its log then."""
    if sorted(os.listdir(model_dir)) == ["logs"]:
        shutil.rmtree(model_dir, ignore_errors=True)


def main(args):
    del args  # every setting is a flag
    _sigint_means_sigterm()
    values = flag_values()
    model_dir = values["train"]["model_dir"]
    created_here = bool(model_dir) and "://" not in model_dir and not os.path.exists(model_dir)
    try:
        return task.run_task(values, on_role=lambda role: _log_file(role, model_dir))
    except bwtf.UserError:
        if created_here and os.path.isdir(model_dir):
            _remove_if_only_logs(model_dir)
        raise


PROGRAM = program.Program(
    name="bwtf-train", doc=__doc__, usage="bwtf-train [flags]",
    flag_groups=(("Model", _MODEL), ("Data", _DATA), ("Training", _TRAIN), ("Evaluator task", [_EVAL_TIMEOUT]),
                 ("Fine-tuning", [_WARM_START_FROM]),
                 ("Checkpoint", _CKPT), ("Cluster", _CLUSTER)))


def run():
    program.run(main, PROGRAM)


if __name__ == "__main__":
    run()
