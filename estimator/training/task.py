"""One task of a training job, from its grouped flag values: ``run_task(values) -> exit code``.

The task's role decides what it does: ``ps`` serves variables until the chief
is done (``bwtf.estimator.cluster.ps_lifecycle``); ``chief`` and ``worker`` train
through ``tf.estimator.train_and_evaluate``, or through bwtf's runner when
``bwtf.estimator.runner.selection`` picks it (TensorFlow 2.16+, or
``BWTF_RUNNER=bwtf``) (the chief saves checkpoints through
``bwtf.ckpt`` only, and evaluates the final checkpoint; a worker stops with the
chief on SIGTERM/SIGUSR1 and ends itself if the chief vanishes, with 0 at
once if the chief had saved the checkpoint at ``--train_steps``, and a ps
worker that starts after that checkpoint exists skips training);
``evaluator`` runs ``bwtf.estimator.evaluation.runner.evaluate_continuously``:
each new intact checkpoint once (skipped ones named), a history file under
``<model_dir>/eval_<split>/`` so a restart repeats nothing, and an exit of its
own after the checkpoint at ``--train_steps`` (0), or after
``--eval_timeout_secs`` without a new one (1). ``--distribution=ps`` (the
default) keeps the variables on the ps tasks, updated asynchronously or, with
``--sync_replicas``, synchronously; ``collective`` uses
MultiWorkerMirroredStrategy (all-reduce, no ps; built before anything else
runs TensorFlow, one replica per worker or the task refuses to start, and a
worker whose chief vanished exits 70 after 10 s); ``none`` (or any single-task
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
import functools
import os
import time
from typing import Optional

from absl import logging

import bwtf
from bwtf import ckpt
from bwtf.ckpt import run_record as _record_file
from bwtf.ckpt import walltime as ckpt_walltime
from bwtf.estimator import _flags
from bwtf.estimator import config
from bwtf.estimator import inputs
from bwtf.estimator import model_fn
from bwtf.estimator.cluster import ports
from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle
from bwtf.estimator.cluster import roles as cluster
from bwtf.estimator.cluster import worker_stop as _worker_stop
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.evaluation import run_record as _record
from bwtf.estimator.evaluation import runner as evaluate
from bwtf.estimator.runner import engine as _runner
from bwtf.estimator.runner import selection as _selection
from bwtf.estimator.runner import spec as _spec
from bwtf.estimator.training import warm_start as _warm_start

_DEFAULT_SAVE_SECS = 600
DEFAULT_EVAL_TIMEOUT_SECS = 3600.0
# A collective worker whose chief is gone cannot train on (see _run_chief_or_worker).
_COLLECTIVE_CHIEF_TIMEOUT_SECS = 10.0
DEFAULT_PEER_TIMEOUT_SECS = 600.0
_WALLTIME_VARIABLES = ("BWTF_WALLTIME_END", "SLURM_JOB_END_TIME", "PBS_WALLTIME")


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
    peer_timeout_secs: float = DEFAULT_PEER_TIMEOUT_SECS
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
    return ckpt.CheckpointPolicy(save_steps=steps, save_secs=secs, keep_last=ckpt_values["keep_checkpoints"],
                                 staging_dir=ckpt_values.get("ckpt_staging_dir"))


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
        model=setup.train.model, optimizer=_flags.optimizer_config(train_values, setup.train.model.name),
        batch_size=train_values["batch_size"], num_workers=role.num_workers,
        train_steps=train_values["train_steps"], precision=train_values["precision"], xla=train_values["xla"],
        distribution=distribution, sync_replicas=train_values["sync_replicas"] and distribution == "ps",
        model_dir=train_values["model_dir"], checkpoint_policy=_checkpoint_policy(values["ckpt"]),
        # Only the chief saves; a worker's session cannot even see the chief's
        # devices (RunConfig's device filters), so its saver ops stay local.
        checkpoint_device=role.checkpoint_device if role.is_chief else None,
        log_every_steps=train_values["log_every_steps"])
    return Job(role, train, setup.dataset, train_values["eval_steps"], train_values["eval_throttle_secs"],
               train_values["eval_every_steps"], train_values.get("eval_timeout_secs", DEFAULT_EVAL_TIMEOUT_SECS),
               values["cluster"].get("peer_timeout_secs", DEFAULT_PEER_TIMEOUT_SECS))


def _check_walltime(environ=None, now=None):
    """A walltime already over would stop training after one step with 75, and a requeue would repeat that."""
    environ = os.environ if environ is None else environ
    end = ckpt_walltime.walltime_end(environ)
    now = time.time() if now is None else now
    if end is None or end > now:
        return
    variable = next(name for name in _WALLTIME_VARIABLES if environ.get(name, "").strip())
    raise bwtf.UserError(
        f"the job's walltime ({variable}={environ[variable].strip()}) ended {now - end:.0f} s ago, at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))}; training would stop at once and ask for a "
        "requeue that can never help. Set BWTF_WALLTIME_END to the epoch second the job ends "
        "(e.g. $(( $(date +%s) + 3600 )) for one hour), or unset it")


def _peer_addresses(role):
    """What this task's session cannot start without: the ps tasks, or (collective) the other workers."""
    spec = role.cluster_spec
    if role.num_ps:
        return list(spec.get("ps", ()))
    return [address for job in ("chief", "worker") for address in spec.get(job, ()) if address != role.address]


def _check_before_training(job, values):
    """Fails fast, before any server starts, on the chief's own problems; returns the job.

    The chief checks its flags against the run record (or writes the record,
    before the first checkpoint), plans a warm start, and has every
    checkpoint's manifest name the record's digest. A collective worker plans
    the same warm start (it writes nothing): each replica initialises its own
    variables, and one that waited for the chief's initial values while the
    chief restored them would wait forever.
    """
    if job.role.task_type != "evaluator":
        _check_walltime()
    if not job.role.is_chief:
        return _with_collective_warm_start(job, values)
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
    # Only now, with every check passed, is anything written: ownership (fences
    # an older chief) and pointers repaired from the checkpoints themselves,
    # before Estimator or a worker reads them.
    latest = ckpt.take_ownership(job.train.model_dir)
    return _with_run_record(job, values, record if latest is not None else None)


def _with_collective_warm_start(job, values):
    source = values["train"].get("warm_start_from")
    if not source or job.train.distribution != "collective" or job.role.task_type != "worker":
        return job
    if ckpt.latest_intact_checkpoint(job.train.model_dir) is not None:
        return job  # the run resumes from its own checkpoint; so does the chief
    return dataclasses.replace(job, warm_start=_warm_start.plan_warm_start(source, job.train))


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


def _uses_collective_strategy(values, role):
    return (values["train"]["distribution"] == "collective" and role.is_distributed
            and role.task_type in ("chief", "worker"))


def _collective_strategy(role):
    """MultiWorkerMirroredStrategy, built before anything runs TensorFlow eagerly.

    TF configures collective ops in the eager context, which must not exist
    yet: reading the dataset's label texts first made TF raise "Collective ops
    must be configured at program startup". The strategy starts this task's
    server, so the port is checked before.
    """
    import tensorflow as tf

    ports.ensure_port_free(role.address)
    with _tf_config(role.tf_config_json()):
        strategy = tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy()
    replicas = strategy.num_replicas_in_sync
    if replicas != role.num_workers:
        gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
        raise cluster.ClusterError(
            f"--distribution=collective expects one device per worker, {role.num_workers} replicas in "
            f"all, but the strategy found {replicas} (this worker sees {len(gpus)} GPU(s): "
            f"{', '.join(gpus) or 'none'}). Give every worker process exactly one GPU: set "
            "CUDA_VISIBLE_DEVICES per task (srun --gpus-per-task=1, or the local rank under mpiexec), "
            "or start one worker per GPU")
    logging.info("collective strategy: %d replicas in sync, one per worker", replicas)
    return strategy


def _estimator(train_config, role, strategy=None, warm_start=None):
    """tf.estimator.Estimator, or bwtf's runner when selected (``bwtf.estimator.runner.selection``)."""
    import tensorflow as tf

    if _selection.use_bwtf_runner():
        run_config = _runner.RunConfig(
            model_dir=train_config.model_dir, task_type=role.task_type if role.is_distributed else "worker",
            task_id=role.task_id, cluster_spec=dict(role.cluster_spec),
            save_summary_steps=train_config.log_every_steps, log_step_count_steps=train_config.log_every_steps,
            train_distribute=strategy)
        return _runner.Runner(model_fn.model_fn, run_config, params=train_config,
                              warm_start_from=warm_start.settings() if warm_start else None)
    with _tf_config(role.tf_config_json()):
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
    mode = _spec.ModeKeys
    train_fn = inputs.make_input_fn(job.data, mode.TRAIN, job.train.batch_size,
                                    num_input_pipelines=job.role.num_workers,
                                    input_pipeline_id=job.role.input_pipeline_id)
    eval_fn = inputs.make_input_fn(job.data, mode.EVAL, job.train.batch_size)
    return train_fn, eval_fn


def _evaluate_locally(job, eval_fn):
    """Evaluates the newest checkpoint in this process, outside the cluster."""
    local_config = dataclasses.replace(job.train, checkpoint_device=None)
    local_role = cluster.ClusterRole("chief", 0, {}, job.role.source)
    estimator = _estimator(local_config, local_role)
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
                     metrics["global_step"], metrics["precision_at_1"], metrics["precision_at_5"],
                     metrics[model_fn.CROSS_ENTROPY])
    return metrics


def _train_in_cluster(job, estimator, train_fn, eval_fn):
    if isinstance(estimator, _runner.Runner):
        # train_and_evaluate's chief and worker roles; the evaluator is its own task.
        _runner.train_distributed(estimator, train_fn, job.train.train_steps)
    else:
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
        "global, %d images per update, %d steps, peak lr %.4f (%s), precision %s%s, model_dir %s",
        job.role.task_type, job.role.task_id, job.role.source, job.train.distribution,
        " sync" if job.train.sync_replicas else "", data, job.train.model.name, job.train.model.num_classes,
        job.train.model.image_size, job.train.batch_size, job.train.num_workers, job.train.global_batch_size,
        job.train.update_batch_size, job.train.train_steps, job.train.peak_lr, _schedule_text(job.train.optimizer),
        job.train.precision, " +xla" if job.train.xla else "", job.train.model_dir, extra=None if job.role.is_chief else bwtf.FILE_ONLY)


def _schedule_text(optimizer):
    decay = optimizer.decay
    if decay == "step":
        decay += " at " + ",".join(f"{b:.3g}" for b in optimizer.decay_boundaries) + " of the steps"
    return (f"base {optimizer.base_lr:g} {optimizer.lr_scaling}, warmup {optimizer.warmup_steps} steps, "
            f"{decay}, weight decay {optimizer.weight_decay:g}, label smoothing {optimizer.label_smoothing:g}")


def _log_summary(job, metrics, start_step, wall_secs):
    latest = ckpt.latest_intact_checkpoint(job.train.model_dir)
    step = latest.step if latest else start_step
    images = (step - start_step) * job.train.update_batch_size
    logging.info(
        "done: %d steps (%d this run) in %.1f s, %.1f images/s mean, final precision@1 %s, newest checkpoint %s",
        step, step - start_step, wall_secs, images / max(wall_secs, 1e-9),
        f"{metrics['precision_at_1']:.4f}" if "precision_at_1" in metrics else "n/a",
        latest.path if latest else "none")


def _train(job, strategy=None):
    # Estimator's "max_steps already saved" decision goes through the verified
    # reader (a worker checks sizes only; the chief has verified in full).
    # (bwtf's runner reads the verified reader itself.)
    if not _selection.use_bwtf_runner():
        # Collective workers decide as the chief does, or one would wait for the others forever.
        ckpt.install_estimator_step_reader(full=job.role.is_chief or strategy is not None)
    train_fn, eval_fn = _input_fns(job)
    estimator = _estimator(job.train, job.role, strategy, warm_start=job.warm_start)
    logging.info("engine: %s", "bwtf's runner" if isinstance(estimator, _runner.Runner) else "tf.estimator",
                 extra=bwtf.FILE_ONLY)
    latest = ckpt.latest_intact_checkpoint(job.train.model_dir) if job.role.is_chief else None
    start_step, start = (latest.step if latest else 0), time.monotonic()
    if job.role.is_distributed:
        metrics = _train_in_cluster(job, estimator, train_fn, eval_fn)
    else:
        metrics = _train_single_process(job, estimator, train_fn, eval_fn)
    if job.role.is_chief:
        _log_summary(job, metrics, start_step, time.monotonic() - start)
    return ckpt.EXIT_REQUEUE if ckpt.stop_requested() else 0


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


def _wait_for_peers(job, finished=None):
    """Waits until every peer answers (TF's session would wait for them in C++,
    forever and deaf to SIGTERM); returns None then.

    A ps worker passes ``finished``: if the chief's final checkpoint is there
    before or during the wait, its step is returned instead (a worker that
    starts after the chief and the ps tasks have finished would wait for
    tasks that have exited). A collective worker decides with the chief, in
    _train.
    """
    final_step = finished() if finished is not None else None
    if final_step is not None or not job.role.is_distributed:
        return final_step
    done = None
    if finished is not None:
        probe = _ps_lifecycle.FinishedProbe(finished)
        done = functools.partial(probe.poll, 0.2)
    return ports.wait_for_peers(_peer_addresses(job.role), job.peer_timeout_secs, done=done)


def _run_chief_or_worker(job, strategy=None):
    # A collective strategy has started this task's server already (its port was checked then).
    if job.role.is_distributed and job.role.address and strategy is None:
        ports.ensure_port_free(job.role.address)
    finished = functools.partial(ckpt.final_checkpoint_step, job.train.model_dir, job.train.train_steps)
    ps_worker = job.role.task_type == "worker" and job.role.num_ps
    final_step = _wait_for_peers(job, finished if ps_worker else None)
    if final_step is not None:
        logging.info("Skipping training: ckpt-%d is intact and at or past --train_steps=%d, so the chief "
                     "has finished.", final_step, job.train.train_steps)
        return 0
    if ps_worker:
        # Under srun/mpiexec nothing else ends a worker stuck after the chief finished.
        _ps_lifecycle.start_worker_watchdog(job.role, finished=finished)
    elif job.role.task_type == "worker" and strategy is not None:
        # A collective worker whose chief died retries its all-reduce forever;
        # no restarted chief can rejoin the ring, so there is nothing to wait for.
        _ps_lifecycle.start_worker_watchdog(job.role, chief_timeout_secs=_COLLECTIVE_CHIEF_TIMEOUT_SECS,
                                            finished=finished)
    if not (job.role.is_chief and job.role.num_ps):
        return _train(job, strategy)
    status = 1
    try:
        status = _train(job, strategy)
        return status
    finally:
        # The ps tasks exit only when told; tell them even when training failed.
        _ps_lifecycle.notify_chief_done(job.role, status)


def _give_devices(role):
    """Narrows CUDA_VISIBLE_DEVICES to this task's GPU (none for ps/evaluator) and logs where it runs.

    TensorFlow reads the variable when it first lists devices, which nothing
    has done yet at this point (imports do not).
    """
    devices = cluster.visible_devices(role, os.environ)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = devices
    # Under bwtf-launch every task is on this host.
    logging.info("%s", cluster.describe_placement(role, os.environ),
                 extra=None if cluster.under_scheduler(role, os.environ) else bwtf.FILE_ONLY)


def run_task(values, on_role=None):
    """Runs this task from flag values grouped as {"model", "data", "train", "ckpt", "cluster"}.

    ``on_role(role)``, when given, is called once the role is known, before anything
    else (train.py opens the task's log file there).
    """
    _selection.use_bwtf_runner()  # a bad BWTF_RUNNER is bad input, before anything starts
    role = _resolve_role(values["cluster"], values["train"]["distribution"])
    if on_role is not None:
        on_role(role)
    cluster.log_role(role, os.environ)
    _give_devices(role)
    if role.task_type == "ps":
        return _ps_lifecycle.serve_parameter_server(role)
    strategy = _collective_strategy(role) if _uses_collective_strategy(values, role) else None
    job = _check_before_training(_build_job(values, role), values)
    _log_start(job)
    if role.task_type == "evaluator":
        return _run_evaluator(job)
    return _run_chief_or_worker(job, strategy)
