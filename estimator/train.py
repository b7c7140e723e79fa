"""``python -m bwtf.estimator.train`` (``bwtf-train``): one task of a training job.

Start it once per task, on every node, with the same flags (``--flagfile=job.flags``
keeps them in one file)::

    # one process (synthetic data, a CPU smoke test)
    python -m bwtf.estimator.train --model=small_cnn --use_synthetic_data \\
        --model_dir=/tmp/run --train_steps=100 --batch_size=32 --distribution=none

    # 1 ps + chief + 1 worker on localhost, classic flags (worker 0 is the chief)
    python -m bwtf.estimator.train --flagfile=job.flags --job_name=ps --task_index=0 \\
        --ps_hosts=localhost:2222 --worker_hosts=localhost:2223,localhost:2224 &
    ...same with --job_name=worker --task_index=0 and --task_index=1

Under Slurm (``srun``) or PBS (``mpiexec``/``aprun``) the role comes from the
scheduler's variables (see ``bwtf.estimator.cluster.roles``); ``--num_ps`` says how
many of the tasks serve parameters.

The task's role decides what it does (``bwtf.estimator.training.task``):
``ps`` serves variables until the chief is done; ``chief`` and ``worker``
train; ``evaluator`` evaluates each new intact checkpoint once and exits after
the checkpoint at ``--train_steps`` (0), or after ``--eval_timeout_secs``
without a new one (1). ``--distribution=ps`` (the default) keeps the variables
on the ps tasks, updated asynchronously or, with ``--sync_replicas``,
synchronously; ``collective`` uses MultiWorkerMirroredStrategy (all-reduce,
no ps); ``none`` (or any single-task job) trains in this process and
evaluates every ``--eval_every_steps``.

GPUs: one GPU per worker process. Set ``CUDA_VISIBLE_DEVICES`` per task (the
launcher does: ``srun --gpus-per-task=1``, or the local rank under mpiexec) so
each process sees exactly one GPU, and install ``bwtf[gpu]``. ``--precision=bf16``
suits A100/H100; ``fp16`` (with dynamic loss scaling) suits V100; ``--xla``
compiles the model on either. ps tasks need no GPU (``CUDA_VISIBLE_DEVICES=``).
Under ``--distribution=collective`` a worker that sees several GPUs is refused
(exit 2): the strategy would make one replica per GPU and the learning rate and
input sharding count one per worker.

Exit codes: 0 done; 2 bad flags, data, cluster or checkpoint (one-line message,
nothing started); ``bwtf.ckpt.EXIT_REQUEUE`` (75) when stopped by a signal or
the walltime after a final checkpoint (ps-cluster workers too, after their
current step, and the evaluator on a signal, after its current evaluation); an evaluator exits 1 when
``--eval_timeout_secs`` passed without the final checkpoint; a ps returns its
lifecycle's code, and a worker exits 70
(``cluster.ps_lifecycle.EXIT_CHIEF_VANISHED``) when its chief vanished (after
60 s in a ps cluster, 10 s under collective, where nothing can go on without it).

Deliberately left out: launching the other tasks (``bwtf-launch``), one-shot
evaluation and export (``bwtf-eval``, ``bwtf-export``).
"""
import sys

from absl import app
from absl import flags

import bwtf
from bwtf import ckpt
from bwtf.estimator import _flags
from bwtf.estimator import _tf_logging
from bwtf.estimator import config
from bwtf.estimator import inputs
from bwtf.estimator import model_fn
from bwtf.estimator import models
from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle
from bwtf.estimator.cluster import roles as cluster
from bwtf.estimator.evaluation import history as _eval_history
from bwtf.estimator.training import task

_MODEL = _flags.define_model_flags()
_DATA = _flags.define_data_flags()
_TRAIN = _flags.define_train_flags()
_CKPT = _flags.define_checkpoint_flags()
_CLUSTER = _flags.define_cluster_flags()

_USER_ERRORS = (
    config.ConfigError, cluster.ClusterError, inputs.DatasetError, model_fn.CheckpointMismatchError,
    models.UnknownModelError, ckpt.CheckpointError, _ps_lifecycle.PortInUseError,
    _eval_history.HistoryError,
)
# The evaluator's own flag; bwtf-eval has the same one (defined only when it runs).
_EVAL_TIMEOUT = flags.DEFINE_float(
    "eval_timeout_secs", task.DEFAULT_EVAL_TIMEOUT_SECS, "evaluator task: stop (exit 1) after this "
    "long without a new checkpoint before the one at --train_steps.", lower_bound=0.0)



def flag_values():
    """The parsed flags, grouped as ``training.task.run_task`` takes them."""
    train = dict(_TRAIN.values(), eval_timeout_secs=_EVAL_TIMEOUT.value)
    return {"model": _MODEL.values(), "data": _DATA.values(), "train": train,
            "ckpt": _CKPT.values(), "cluster": _CLUSTER.values()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; every setting is a --flag")
    _tf_logging.route_tensorflow_logs_through_absl()
    try:
        code = task.run_task(flag_values())
    except _USER_ERRORS as error:
        print(f"bwtf-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


def run():
    bwtf.show_program_flags_in_help()
    app.run(main)


if __name__ == "__main__":
    run()
