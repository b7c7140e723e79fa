"""bwtf's Estimator-compatible runner: a model_fn trained, evaluated and exported without tf.estimator.

    config = RunConfig(model_dir, task_type="chief", task_id=0, cluster_spec={...})
    runner = Runner(model_fn, config, params=train_config, warm_start_from=settings)
    runner.train(input_fn, max_steps, hooks=(), master="")       -> runner
    runner.evaluate(input_fn, steps=None, checkpoint_path=None, name=None) -> {metric: value, "global_step": N}
    runner.export_saved_model(export_dir_base, serving_input_receiver_fn, checkpoint_path=None) -> path
    train_distributed(runner, input_fn, max_steps)                 # chief/worker of a cluster

It keeps the parts of ``tf.estimator.Estimator`` bwtf's programs use, with the
same behaviour, on ``tf.compat.v1.train.MonitoredTrainingSession`` (present in
TensorFlow 2.15 and 2.21):

* ``model_fn(features, labels, mode, params, config)`` is called with the
  arguments its signature names, in a fresh graph, under
  ``replica_device_setter`` when the cluster has ps tasks; ``input_fn`` is
  called on the CPU with the arguments it names (mode, params, config), and a
  ``tf.data.Dataset`` it returns is read through an initializable iterator.
* ``train`` stops at ``max_steps`` counted from the newest checkpoint, which
  is read through bwtf's verified reader (``ckpt.startup.saved_global_step``):
  a run that already reached it logs Estimator's "Skipping training" line and
  does nothing. The scaffold (bwtf's gathered saver), the training hooks and
  the chief-only hooks (bwtf.ckpt's saves, walltime and signal stop) run as the
  Estimator runs them; no stock CheckpointSaverHook is made. The chief writes
  the "loss" and ``global_step/sec`` summaries to model_dir every
  ``save_summary_steps`` / ``log_step_count_steps``, and logs loss and step.
* ``evaluate`` restores one checkpoint through the scaffold's saver (bwtf's
  verified restore), runs the v1 metrics' update ops over the input (or
  ``steps`` batches), and returns the metrics plus "loss" (the mean of the
  spec's loss) and "global_step"; it logs Estimator's "Saving dict for global
  step" line and writes the scalars to ``<model_dir>/eval_<name>/``.
* ``export_saved_model`` writes the PREDICT graph's ``export_outputs`` with
  ``tf.compat.v1.saved_model.Builder`` into ``<export_dir_base>/<timestamp>``.

Sessions use the Estimator's settings (soft placement, one meta-optimizer
pass; in a ps cluster, device filters that keep a task's session to the ps
tasks and itself; under a strategy, the strategy's own), so a step costs what
it costs under the Estimator.

With ``RunConfig.train_distribute`` (a MultiWorkerMirroredStrategy, one
replica per worker) ``train`` builds the graph as Estimator built it under a
between-graph strategy (``_replicated``): the session goes to the strategy's
server with its config, and every worker initialises its own copy of the
variables, or restores it from the newest intact checkpoint (bwtf's verified
reader, never TF's pointer, so the replicas start from the same values), while
only the chief runs the chief hooks and summaries. Each worker verifies that
checkpoint in full before deciding whether ``max_steps`` is already reached,
so all of them decide alike.

Deliberately left out: saving listeners, TPU, in-graph strategies, and
prediction (``predict``).
"""
import contextlib
import copy
import dataclasses
import inspect
import os
import time
from typing import Dict, List, Optional

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from bwtf.ckpt import startup as _ckpt_startup
from bwtf.estimator.runner import _replicated
from bwtf.estimator.runner import spec

LOSS_METRIC = "loss"
GLOBAL_STEP = "global_step"
# A worker starts a little after the chief, as train_and_evaluate staggers them,
# so its first readiness check mostly finds the variables initialised.
_WORKER_DELAY_SECS = 5.0
_MAX_WORKER_DELAY_SECS = 60.0


class RunnerError(ValueError):
    """The runner was asked for something it cannot do (a bug in the caller, not bad user input)."""


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What model_fn's ``config`` argument carries, and where this task sits in its cluster."""

    model_dir: str
    task_type: str = "worker"  # Estimator's name for the one task of a local run
    task_id: int = 0
    cluster_spec: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    save_summary_steps: Optional[int] = 100
    log_step_count_steps: Optional[int] = 100
    # A between-graph strategy (MultiWorkerMirroredStrategy, one replica per
    # worker) made before anything ran TensorFlow; it has started this task's server.
    train_distribute: Optional[object] = None

    @property
    def is_distributed(self):
        return bool(self.cluster_spec)

    @property
    def is_chief(self):
        return not self.is_distributed or self.task_type == "chief"

    @property
    def num_ps_replicas(self):
        return len(self.cluster_spec.get("ps", ()))

    @property
    def num_worker_replicas(self):
        if not self.is_distributed:
            return 1
        return len(self.cluster_spec.get("chief", ())) + len(self.cluster_spec.get("worker", ()))

    @property
    def device_fn(self):
        """Variables round-robin on the ps tasks, the rest on this task (None without ps)."""
        if not self.num_ps_replicas:
            return None
        return tf.compat.v1.train.replica_device_setter(
            ps_tasks=self.num_ps_replicas, worker_device=f"/job:{self.task_type}/task:{self.task_id}",
            merge_devices=True, ps_device="/job:ps", cluster=tf.train.ClusterSpec(self.cluster_spec))

    def session_config(self):
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        config.graph_options.rewrite_options.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
        if self.train_distribute is not None:
            # Its collective group leader, and a device filter of its own.
            return self.train_distribute.update_config_proto(config)
        if self.is_distributed:
            # A task sees the ps tasks and itself only: a worker never waits for, or
            # places ops on, a task it does not need (the chief's saver device).
            own = "/job:chief" if self.task_type == "chief" else f"/job:{self.task_type}/task:{self.task_id}"
            config.device_filters.extend(["/job:ps", own])
            config.experimental.share_session_state_in_clusterspec_propagation = True
        return config


class _DatasetInitializerHook(tf.compat.v1.train.SessionRunHook):
    """Initialises the input iterator in every new session."""

    def __init__(self, iterator):
        self._iterator = iterator

    def after_create_session(self, session, coord):
        del coord
        session.run(self._iterator.initializer)


def _accepted(function, candidates):
    """The candidates ``function`` names as parameters; as Estimator, ``**kwargs`` takes none of them
    (a wrapper ``f(*args, **kwargs)`` forwards exactly what its caller gets)."""
    parameters = inspect.signature(function).parameters
    named = {name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {name: value for name, value in candidates.items() if name in named}


def _features_and_labels(input_fn, mode, params, config):
    """Calls ``input_fn`` on the CPU; returns (features, labels, hooks)."""
    with tf.device("/cpu:0"):
        result = input_fn(**_accepted(input_fn, {"mode": mode, "params": params, "config": config}))
        hooks = []
        if isinstance(result, tf.data.Dataset):
            iterator = tf.compat.v1.data.make_initializable_iterator(result)
            hooks.append(_DatasetInitializerHook(iterator))
            result = iterator.get_next()
    if isinstance(result, (tuple, list)):
        if len(result) != 2:
            raise RunnerError(f"input_fn must give features or (features, labels), got {len(result)} items")
        return result[0], result[1], hooks
    return result, None, hooks


def _newest_checkpoint(model_dir):
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel

    ref = ckpt.latest_intact_checkpoint(model_dir)
    if ref is not None:
        return ref.path
    return tf.train.latest_checkpoint(model_dir)


class Runner:
    """A model_fn with its RunConfig and params: train, evaluate, export (see the module docstring)."""

    def __init__(self, model_fn, config, params=None, warm_start_from=None):
        self._model_fn = model_fn
        self.config = config
        self.params = params
        self._warm_start = warm_start_from

    @property
    def model_dir(self):
        return self.config.model_dir

    def _call_model_fn(self, features, labels, mode):
        arguments = _accepted(self._model_fn, {"features": features, "labels": labels, "mode": mode,
                                                "params": self.params, "config": self.config})
        model_spec = self._model_fn(**arguments)
        if not hasattr(model_spec, "mode") or not hasattr(model_spec, "scaffold"):
            raise RunnerError(f"model_fn must return an EstimatorSpec, got {type(model_spec).__name__}")
        return model_spec

    def train(self, input_fn, max_steps, hooks=(), master=""):
        """Trains until the global step reaches ``max_steps`` (or a hook stops it); returns self."""
        # Under a strategy every worker must make the chief's decision: each verifies in full.
        start_step = _ckpt_startup.saved_global_step(
            self.model_dir, full=self.config.is_chief or self.config.train_distribute is not None)
        if start_step >= max_steps:
            _estimator_log("Skipping training since max_steps has already saved.")
            return self
        strategy = self.config.train_distribute
        with tf.Graph().as_default() as graph, graph.device(self.config.device_fn), \
                _replicated.strategy_scope(strategy) if strategy else contextlib.nullcontext():
            global_step = tf.compat.v1.train.get_or_create_global_step()
            if strategy:
                model_spec, input_hooks = _replicated.train_spec(strategy, self._call_model_fn, input_fn,
                                                                 self.params, self.config)
            else:
                features, labels, input_hooks = _features_and_labels(input_fn, spec.ModeKeys.TRAIN, self.params,
                                                                     self.config)
                model_spec = self._call_model_fn(features, labels, spec.ModeKeys.TRAIN)
            # As Estimator: a run that has a checkpoint of its own resumes from it and
            # never reads the warm-start source again (it may have been pruned or moved).
            if self._warm_start is not None and _newest_checkpoint(self.model_dir) is None:
                settings = self._warm_start
                tf.compat.v1.train.warm_start(settings.ckpt_to_initialize_from, settings.vars_to_warm_start,
                                              settings.var_name_to_vocab_info, settings.var_name_to_prev_var_name)
            tf.compat.v1.summary.scalar(LOSS_METRIC, model_spec.loss)
            all_hooks = list(hooks) + input_hooks + list(model_spec.training_hooks) + [
                tf.compat.v1.train.StopAtStepHook(last_step=max_steps),
                tf.compat.v1.train.NanTensorHook(model_spec.loss)]
            if self.config.log_step_count_steps:
                all_hooks.append(tf.compat.v1.train.LoggingTensorHook(
                    {LOSS_METRIC: model_spec.loss, "step": global_step},
                    every_n_iter=self.config.log_step_count_steps))
            loss = self._run_training(model_spec, all_hooks, master)
        _estimator_log("Loss for final step: %s.", loss)
        return self

    def _run_training(self, model_spec, hooks, master):
        if self.config.train_distribute is not None:
            # Every worker restores the same verified checkpoint, whatever TF's pointer says.
            session = _replicated.monitored_session(model_spec, hooks, master, self.config,
                                                    _newest_checkpoint(self.model_dir))
        else:
            session = tf.compat.v1.train.MonitoredTrainingSession(
                master=master, is_chief=self.config.is_chief, checkpoint_dir=self.model_dir,
                scaffold=model_spec.scaffold, hooks=hooks, chief_only_hooks=list(model_spec.training_chief_hooks),
                save_checkpoint_secs=None, save_checkpoint_steps=None,
                save_summaries_steps=self.config.save_summary_steps, save_summaries_secs=None,
                log_step_count_steps=self.config.log_step_count_steps, config=self.config.session_config(),
                max_wait_secs=7200)
        loss = None
        with session:
            while not session.should_stop():
                _, loss = session.run([model_spec.train_op, model_spec.loss])
        return loss

    def evaluate(self, input_fn, steps=None, checkpoint_path=None, name=None, hooks=()):
        """The metrics of one checkpoint (the newest intact one by default), as Estimator.evaluate returns them."""
        checkpoint_path = checkpoint_path or _newest_checkpoint(self.model_dir)
        if checkpoint_path is None:
            raise RunnerError(f"no checkpoint to evaluate in {self.model_dir}")
        with tf.Graph().as_default():
            global_step = tf.compat.v1.train.get_or_create_global_step()
            features, labels, input_hooks = _features_and_labels(input_fn, spec.ModeKeys.EVAL, self.params,
                                                                 self.config)
            model_spec = self._call_model_fn(features, labels, spec.ModeKeys.EVAL)
            metrics = dict(model_spec.eval_metric_ops)
            if LOSS_METRIC not in metrics:
                metrics[LOSS_METRIC] = tf.compat.v1.metrics.mean(model_spec.loss)
            update_op = tf.group(*[update for _, update in metrics.values()])
            final_ops = {metric: value for metric, (value, _) in metrics.items()}
            final_ops[GLOBAL_STEP] = global_step
            final_hook = tf.compat.v1.train.FinalOpsHook(final_ops)
            session_creator = tf.compat.v1.train.ChiefSessionCreator(
                scaffold=model_spec.scaffold, checkpoint_filename_with_path=checkpoint_path,
                config=self.config.session_config() if not self.config.is_distributed else _local_session_config())
            all_hooks = list(hooks) + input_hooks + list(model_spec.evaluation_hooks) + [final_hook]
            done = 0
            with tf.compat.v1.train.MonitoredSession(session_creator=session_creator, hooks=all_hooks) as session:
                while not session.should_stop() and (steps is None or done < steps):
                    session.run(update_op)
                    done += 1
        results = final_hook.final_ops_values
        _write_eval_summary(self.model_dir, name, results)
        return results

    def export_saved_model(self, export_dir_base, serving_input_receiver_fn, checkpoint_path=None):
        """Writes the PREDICT graph's export_outputs as a SavedModel; returns its directory."""
        from bwtf.estimator.runner import _export  # pylint: disable=import-outside-toplevel

        checkpoint_path = checkpoint_path or _newest_checkpoint(self.model_dir)
        if checkpoint_path is None:
            raise RunnerError(f"no checkpoint to export in {self.model_dir}")
        return _export.export_saved_model(self._call_model_fn, export_dir_base, serving_input_receiver_fn,
                                          checkpoint_path)


def _estimator_log(message, *args):
    """The lines tf.estimator logs, through TensorFlow's logger as it does (so the console shows the same)."""
    tf.compat.v1.logging.info(message, *args)


def _local_session_config():
    return RunConfig(model_dir="").session_config()


def _write_eval_summary(model_dir, name, results):
    """Estimator's record of an evaluation: one log line, and the scalars in ``eval_<name>``."""
    step = int(results[GLOBAL_STEP])
    text = ", ".join("%s = %s" % (key, value) for key, value in sorted(results.items())  # pylint: disable=consider-using-f-string
                     if not isinstance(value, bytes))
    _estimator_log("Saving dict for global step %d: %s", step, text)
    summary = tf.compat.v1.Summary()
    for key, value in sorted(results.items()):
        if key != GLOBAL_STEP and getattr(value, "size", 1) == 1 and not isinstance(value, bytes):
            summary.value.add(tag=key, simple_value=float(value))
    # Event files are named by the second and the host: a second writer opened in
    # the same second would truncate the first's file. One per folder, as Estimator.
    with tf.Graph().as_default():  # a FileWriter is made in graph mode
        writer = tf.compat.v1.summary.FileWriterCache.get(os.path.join(model_dir, f"eval_{name}" if name else "eval"))
    writer.add_summary(summary, step)
    writer.flush()


def train_distributed(runner, input_fn, max_steps, hooks=()):
    """One chief or worker of a cluster: trains through this task's server.

    In a ps cluster it starts the server, and a worker waits ``5 s x (task
    index + 1)`` (at most 60 s) first, as train_and_evaluate does, so the chief
    has usually initialised the variables. Under a strategy
    (``RunConfig.train_distribute``) the strategy's server is used and every
    worker starts at once: each one's variables are initialised together. As
    TF's distribute coordinator did for Estimator, the graph is built with a
    copy of the strategy configured for this task: with the strategy made in
    eager mode itself, a worker's session took seconds to close, and a worker
    whose chief had exited by then never finished.
    """
    config = runner.config
    if config.task_type not in ("chief", "worker") or not config.is_distributed:
        raise RunnerError(f"train_distributed runs a chief or worker of a cluster, not {config.task_type!r}")
    if config.train_distribute is not None:
        address = config.cluster_spec[config.task_type][config.task_id]
        strategy = copy.deepcopy(config.train_distribute)
        strategy.configure(config.session_config(), tf.train.ClusterSpec(config.cluster_spec), config.task_type,
                           config.task_id)
        runner = Runner(runner._model_fn, dataclasses.replace(config, train_distribute=strategy), runner.params,
                        runner._warm_start)
        return runner.train(input_fn, max_steps, hooks=hooks, master=f"grpc://{address}")
    server = tf.distribute.Server(tf.train.ClusterSpec(config.cluster_spec), job_name=config.task_type,
                                  task_index=config.task_id, config=config.session_config(), start=True)
    if config.task_type == "worker":
        delay = min(_MAX_WORKER_DELAY_SECS, _WORKER_DELAY_SECS * (config.task_id + 1))
        _estimator_log("Waiting %d secs before starting training.", delay)
        time.sleep(delay)
    return runner.train(input_fn, max_steps, hooks=hooks, master=server.target)
