"""One task of a training job, from its grouped flag values: ``run_task(values) -> exit code``.

The task's role decides what it does: ``ps`` serves variables until the chief
is done (``bwtf.estimator.cluster.ps_lifecycle``); ``chief`` and ``worker`` train
through ``tf.estimator.train_and_evaluate`` (the chief saves checkpoints through
``bwtf.ckpt`` only, and evaluates the final checkpoint; a worker stops with the
chief on SIGTERM/SIGUSR1 and ends itself if the chief vanishes);
``evaluator`` runs ``bwtf.estimator.evaluation.runner.evaluate_continuously``:
each new intact checkpoint once (skipped ones named), a history file under
``<model_dir>/eval_<split>/`` so a restart repeats nothing, and an exit of its
own after the checkpoint at ``--train_steps`` (0), or after
``--eval_timeout_secs`` without a new one (1). ``--distribution=ps`` (the
default) keeps the variables on the ps tasks, updated asynchronously or, with
``--sync_replicas``, synchronously; ``collective`` uses
MultiWorkerMirroredStrategy (all-reduce, no ps); ``none`` (or any single-task
job) trains in this process and evaluates every ``--eval_every_steps``.

With ``--sync_replicas`` the chief closes its training session as soon as it
stops, so TF's SyncReplicasOptimizer queue runner (blocked waiting for
gradients no worker will send) is cancelled at once instead of after the
MonitoredSession's 120 s grace period (``training.sync_replicas``).

Deliberately left out: the command line (``bwtf.estimator.train``), launching
the other tasks (``bwtf-launch``), one-shot evaluation and export.
"""
import contextlib
import dataclasses
import os
import time
from typing import Optional

from absl import logging

from bwtf import ckpt
from bwtf.ckpt import run_record as _record_file
from bwtf.estimator import _flags
from bwtf.estimator import config
from bwtf.estimator import inputs
from bwtf.estimator import model_fn
from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle
from bwtf.estimator.cluster import roles as cluster
from bwtf.estimator.cluster import worker_stop as _worker_stop
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.evaluation import run_record as _record
from bwtf.estimator.evaluation import runner as evaluate
from bwtf.estimator.training import warm_start as _warm_start

_DEFAULT_SAVE_SECS = 600
DEFAULT_EVAL_TIMEOUT_SECS = 3600.0


@dataclasses.dataclass(frozen=True)
class Job:
    """What this task runs, resolved once from flags, cluster and dataset."""

    role: cluster.ClusterRole
    train: config.TrainConfig
    data: config.DatasetConfig
    eval_steps: int
    eval_throttle_secs: int
    eval_every_steps: int
    eval_timeout_secs: float = 3600.0
    warm_start: Optional[_warm_start.WarmStart] = None  # the chief's, on a run without checkpoints


def _resolve_role(cluster_values, distribution):
    values = dict(cluster_values)
    role = cluster.resolve(
        source=values["source"], job_name=values["job_name"], task_index=values["task_index"],
        ps_hosts=values["ps_hosts"], worker_hosts=values["worker_hosts"],
        num_ps=values["num_ps"] if distribution == "ps" else 0)
    if distribution == "none" and role.is_distributed:
        raise cluster.ClusterError(
            f"--distribution=none but the cluster ({role.source}) has {role.num_workers} training task(s) "
            f"and {role.num_ps} ps; use --distribution=ps or collective, or start a single task")
    if distribution == "ps" and role.is_distributed and not role.num_ps:
        # Without ps tasks every worker would silently train its own copy.
        raise cluster.ClusterError(
            f"--distribution=ps but the cluster ({role.source}) lists no ps task; add --ps_hosts "
            "(or --num_ps) or use --distribution=collective")
    if distribution == "collective" and role.num_ps:
        raise cluster.ClusterError(
            f"--distribution=collective needs no ps, but the cluster lists {role.num_ps}; drop the ps "
            "tasks (or --num_ps=0) or use --distribution=ps")
    return role


def _checkpoint_policy(ckpt_values):
    steps, secs = ckpt_values["save_checkpoints_steps"], ckpt_values["save_checkpoints_secs"]
    if steps is None and secs is None:
        secs = _DEFAULT_SAVE_SECS
    return ckpt.CheckpointPolicy(save_steps=steps, save_secs=secs, keep_last=ckpt_values["keep_checkpoints"])


def _build_job(values, role):
    train_values, data_values = values["train"], values["data"]
    distribution = train_values["distribution"] if role.is_distributed else "none"
    if not train_values["model_dir"]:
        raise config.ConfigError("--model_dir is required: checkpoints and summaries go there")
    # The same reading of the model and data flags as bwtf-eval and bwtf-export.
    setup = _eval_setup.model_setup(
        values["model"], data_values, train_values["model_dir"], data_values["eval_split"],
        splits=(data_values["train_split"], data_values["eval_split"]),
        split_flag="--train_split/--eval_split",
        # Class words cost a partial read of the smallest split: only the tasks
        # that report results (the chief and the evaluator) name classes.
        with_label_texts=role.is_chief or role.task_type == "evaluator")
    train = config.TrainConfig(
        model=setup.train.model, optimizer=_flags.optimizer_config(train_values),
        batch_size=train_values["batch_size"], num_workers=role.num_workers,
        train_steps=train_values["train_steps"], precision=train_values["precision"], xla=train_values["xla"],
        distribution=distribution, sync_replicas=train_values["sync_replicas"] and distribution == "ps",
        model_dir=train_values["model_dir"], checkpoint_policy=_checkpoint_policy(values["ckpt"]),
        # Only the chief saves; a worker's session cannot even see the chief's
        # devices (RunConfig's device filters), so its saver ops stay local.
        checkpoint_device=role.checkpoint_device if role.is_chief else None,
        log_every_steps=train_values["log_every_steps"])
    return Job(role, train, setup.dataset, train_values["eval_steps"], train_values["eval_throttle_secs"],
               train_values["eval_every_steps"], train_values.get("eval_timeout_secs", DEFAULT_EVAL_TIMEOUT_SECS))


def _check_before_training(job, values):
    """Fails fast, before any server starts, on the chief's own problems; returns the job.

    The chief checks its flags against the run record (or writes the record,
    before the first checkpoint), plans a warm start, and has every
    checkpoint's manifest name the record's digest.
    """
    if not job.role.is_chief:
        return job
    import tensorflow as tf

    exists = tf.io.gfile.isdir(job.train.model_dir)
    record = _record_file.read_record(job.train.model_dir) if exists else None
    latest = ckpt.latest_intact_checkpoint(job.train.model_dir) if exists else None
    source = values["train"].get("warm_start_from")
    if latest is not None:
        if record is not None:
            _record.check_restart(record.data, record.path, job.train)
        model_fn.check_checkpoint_compatible(latest.path, job.train)
        logging.info("resuming from %s (step %d)%s", latest.path, latest.step,
                     "; --warm_start_from is not used again" if source else "")
    elif source:
        job = dataclasses.replace(job, warm_start=_warm_start.plan_warm_start(source, job.train))
    # Only now, with every check passed, is anything written.
    ckpt.require_writable_model_dir(job.train.model_dir)
    return _with_run_record(job, values, record if latest is not None else None)


def _with_run_record(job, values, kept_record):
    """Writes run.json (unless ``kept_record``, a resumed run's, stays); returns the job whose
    saves name the record's digest in each manifest."""
    if kept_record is None:
        data = _record.build_record(job.train, job.data, _jsonable(values), job.role,
                                    job.warm_start.describe() if job.warm_start else None)
        digest = _record_file.write_record(job.train.model_dir, data)
        logging.info("run record %s written (%s)", os.path.join(job.train.model_dir, _record_file.RECORD_FILE),
                     digest)
    else:
        digest = kept_record.digest
    policy = dataclasses.replace(job.train.checkpoint_policy,
                                 manifest_extra=((_record_file.MANIFEST_KEY, digest),))
    return dataclasses.replace(job, train=dataclasses.replace(job.train, checkpoint_policy=policy))


def _jsonable(values):
    """The flag groups as the record keeps them (lists for tuples, nothing unserializable)."""
    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)

    return {group: {name: plain(value) for name, value in sorted(flag_group.items())}
            for group, flag_group in values.items()}


@contextlib.contextmanager
def _tf_config(text):
    """TF_CONFIG as RunConfig and the strategies read it, restored afterwards."""
    previous = os.environ.pop("TF_CONFIG", None)
    if text:
        os.environ["TF_CONFIG"] = text
    try:
        yield
    finally:
        os.environ.pop("TF_CONFIG", None)
        if previous is not None:
            os.environ["TF_CONFIG"] = previous


def _estimator(train_config, role_tf_config, collective=False, warm_start=None):
    import tensorflow as tf

    with _tf_config(role_tf_config):
        strategy = tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy() if collective else None
        run_config = tf.estimator.RunConfig(
            model_dir=train_config.model_dir,
            # The stock CheckpointSaverHook would write sharded files from every
            # ps; bwtf.ckpt's chief hooks save instead (see model_fn).
            save_checkpoints_steps=None, save_checkpoints_secs=None,
            save_summary_steps=train_config.log_every_steps,
            log_step_count_steps=train_config.log_every_steps,
            train_distribute=strategy)
    return tf.estimator.Estimator(model_fn.model_fn, config=run_config, params=train_config,
                                  warm_start_from=warm_start.settings() if warm_start else None)


def _input_fns(job):
    import tensorflow as tf

    mode = tf.estimator.ModeKeys
    train_fn = inputs.make_input_fn(job.data, mode.TRAIN, job.train.batch_size,
                                    num_input_pipelines=job.role.num_workers,
                                    input_pipeline_id=job.role.input_pipeline_id)
    eval_fn = inputs.make_input_fn(job.data, mode.EVAL, job.train.batch_size)
    return train_fn, eval_fn


def _evaluate_locally(job, eval_fn):
    """Evaluates the newest checkpoint in this process, outside the cluster."""
    local_config = dataclasses.replace(job.train, checkpoint_device=None)
    estimator = _estimator(local_config, "")
    return estimator.evaluate(eval_fn, steps=job.eval_steps or None)


def _train_single_process(job, estimator, train_fn, eval_fn):
    chunk = job.eval_every_steps or job.train.train_steps
    metrics = {}
    target = 0
    while target < job.train.train_steps and not ckpt.stop_requested():
        target = min(target + chunk, job.train.train_steps)
        estimator.train(train_fn, max_steps=target)
        if ckpt.stop_requested():
            break
        metrics = estimator.evaluate(eval_fn, steps=job.eval_steps or None)
        logging.info("evaluation at step %d: precision@1 %.4f precision@5 %.4f loss %.4f",
                     metrics["global_step"], metrics["precision_at_1"], metrics["precision_at_5"], metrics["loss"])
    return metrics


def _train_in_cluster(job, estimator, train_fn, eval_fn):
    import tensorflow as tf

    train_spec = tf.estimator.TrainSpec(train_fn, max_steps=job.train.train_steps)
    eval_spec = tf.estimator.EvalSpec(eval_fn, steps=job.eval_steps or None, start_delay_secs=0,
                                      throttle_secs=job.eval_throttle_secs)
    with _tf_config(job.role.tf_config_json()):
        tf.estimator.train_and_evaluate(estimator, train_spec, eval_spec)
    if job.role.is_chief and not ckpt.stop_requested():
        return _evaluate_locally(job, eval_fn)
    return {}


def _log_start(job):
    data = "synthetic data" if job.data.use_synthetic_data else f"{job.data.name} in {job.data.data_dir}"
    logging.info(
        "task %s:%d (%s, distribution=%s%s): %s, %s with %d classes at %dpx, batch %d per worker x %d = %d "
        "global, %d steps, peak lr %.4f, precision %s%s, model_dir %s",
        job.role.task_type, job.role.task_id, job.role.source, job.train.distribution,
        " sync" if job.train.sync_replicas else "", data, job.train.model.name, job.train.model.num_classes,
        job.train.model.image_size, job.train.batch_size, job.train.num_workers, job.train.global_batch_size,
        job.train.train_steps, job.train.peak_lr, job.train.precision, " +xla" if job.train.xla else "",
        job.train.model_dir)


def _log_summary(job, metrics, start_step, wall_secs):
    latest = ckpt.latest_intact_checkpoint(job.train.model_dir)
    step = latest.step if latest else start_step
    async_ps = job.train.distribution == "ps" and not job.train.sync_replicas
    images = (step - start_step) * (job.train.batch_size if async_ps else job.train.global_batch_size)
    logging.info(
        "done: %d steps (%d this run) in %.1f s, %.1f images/s mean, final precision@1 %s, newest checkpoint %s",
        step, step - start_step, wall_secs, images / max(wall_secs, 1e-9),
        f"{metrics['precision_at_1']:.4f}" if "precision_at_1" in metrics else "n/a",
        latest.path if latest else "none")


def _train(job):
    train_fn, eval_fn = _input_fns(job)
    estimator = _estimator(job.train, job.role.tf_config_json(),
                           collective=job.train.distribution == "collective", warm_start=job.warm_start)
    latest = ckpt.latest_intact_checkpoint(job.train.model_dir) if job.role.is_chief else None
    start_step, start = (latest.step if latest else 0), time.monotonic()
    if job.role.is_distributed:
        metrics = _train_in_cluster(job, estimator, train_fn, eval_fn)
    else:
        metrics = _train_single_process(job, estimator, train_fn, eval_fn)
    if job.role.is_chief:
        _log_summary(job, metrics, start_step, time.monotonic() - start)
    stopped = ckpt.stop_requested() or _worker_stop.stop_requested()
    return ckpt.EXIT_REQUEUE if stopped else 0


def _run_evaluator(job):
    """The evaluator task: each new intact checkpoint once, until the one at --train_steps."""
    eval_job = evaluate.EvalJob(
        job.train.model_dir, job.data, dataclasses.replace(job.train, checkpoint_device=None),
        job.train.batch_size, job.eval_steps or None)
    sleep = _worker_stop.signal_aware_sleep(job.train.checkpoint_policy.stop_signals)
    try:
        outcome = evaluate.evaluate_continuously(
            eval_job, final_step=job.train.train_steps, idle_timeout_secs=job.eval_timeout_secs,
            poll_secs=max(job.eval_throttle_secs, 1), sleep=sleep)
    except _worker_stop.StopSignal as stop:
        # Every finished evaluation is in the history: a requeued evaluator goes on from there.
        logging.warning("evaluator stopped by %s; its history keeps what it evaluated", stop)
        return ckpt.EXIT_REQUEUE
    logging.info("evaluator stopped (%s) after %d evaluation(s) this run", outcome.reason,
                 len(outcome.evaluated))
    # Timing out before the final step means training stalled or died.
    return 0 if outcome.reason == "final" else 1


def _run_chief_or_worker(job):
    if job.role.is_distributed and job.role.address:
        _ps_lifecycle.ensure_port_free(job.role.address)
    if job.role.task_type == "worker" and job.role.num_ps:
        # Under srun/mpiexec nothing else ends a worker stuck after the chief finished.
        _ps_lifecycle.start_worker_watchdog(job.role)
    if not (job.role.is_chief and job.role.num_ps):
        return _train(job)
    status = 1
    try:
        status = _train(job)
        return status
    finally:
        # The ps tasks exit only when told; tell them even when training failed.
        _ps_lifecycle.notify_chief_done(job.role, status)


def run_task(values):
    """Runs this task from flag values grouped as {"model", "data", "train", "ckpt", "cluster"}."""
    role = _resolve_role(values["cluster"], values["train"]["distribution"])
    if role.task_type == "ps":
        return _ps_lifecycle.serve_parameter_server(role)
    job = _check_before_training(_build_job(values, role), values)
    _log_start(job)
    if role.task_type == "evaluator":
        return _run_evaluator(job)
    return _run_chief_or_worker(job)
