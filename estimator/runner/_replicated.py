"""The TRAIN spec of a model_fn under a between-graph strategy (MultiWorkerMirroredStrategy), for the runner.

    with _replicated.strategy_scope(strategy):
        model_spec, input_hooks = _replicated.train_spec(strategy, call_model_fn, input_fn, params, config)
        session = _replicated.monitored_session(model_spec, hooks, master, config, checkpoint_path)

What ``tf.estimator`` did for ``train_distribute`` in graph mode, kept to
what bwtf runs: one replica per worker process, every worker building the
same graph.

* ``strategy_scope`` enters the strategy's scope with the v1 optimizers told
  to scale each replica's loss by 1/replicas, as Estimator did: the
  all-reduce sums the gradients, so one update averages every worker's batch.
* ``train_spec`` reads the input through the strategy's iterator
  (``input_fn`` gets the strategy's ``input_context`` where it names one),
  calls the model_fn once per replica, and returns one EstimatorSpec: the
  loss reduced over the replicas (their mean once the optimizer scaled it),
  the replicas' train ops grouped, the first replica's hooks, and a scaffold
  that keeps the model_fn's saver (bwtf's gathered saver), its
  ready-for-local-init op built inside the replica.
* ``monitored_session`` is the session every worker trains in: each one
  initialises its copy of the variables (the strategy broadcasts the chief's
  initial values) or restores ``checkpoint_path``, which the caller chose
  with bwtf's verified reader, so every replica starts from the same values;
  only the chief runs the chief hooks and writes the step-rate and summary
  events, as MonitoredTrainingSession's chief does.

Deliberately left out: several replicas per worker (bwtf refuses to start
that, see ``training.task``), in-graph replication, TPU loops.
"""
import contextlib
import inspect

import tensorflow as tf
from tensorflow.python.training import training_util

from bwtf.estimator.runner import spec


@contextlib.contextmanager
def strategy_scope(strategy):
    """The strategy's scope, with v1 optimizers scaling the loss as under the Estimator."""
    with strategy.scope(), strategy._scale_loss_for_estimator_enabled():  # pylint: disable=protected-access
        yield


class _IteratorInitializerHook(tf.compat.v1.train.SessionRunHook):
    """Initialises the strategy's input iterator in every new session."""

    def __init__(self, initializer):
        self._initializer = initializer

    def after_create_session(self, session, coord):
        del coord
        session.run(self._initializer)


def _input(strategy, input_fn, params, config):
    """(features, labels, hooks) from the strategy's iterator over ``input_fn``'s dataset."""
    named = inspect.signature(input_fn).parameters

    def call_input_fn(input_context):
        candidates = {"mode": spec.ModeKeys.TRAIN, "params": params, "config": config,
                      "input_context": input_context}
        return input_fn(**{name: value for name, value in candidates.items() if name in named})

    iterator = strategy.make_input_fn_iterator(call_input_fn)
    hooks = [_IteratorInitializerHook(iterator.initialize())]
    result = iterator.get_next()
    if isinstance(result, (tuple, list)):
        return result[0], result[1], hooks
    return result, None, hooks


def _ready_for_local_init_op(scaffold):
    """As Scaffold.finalize would make it, but inside the replica (as Estimator did)."""
    if scaffold.ready_for_local_init_op is not None:
        return scaffold.ready_for_local_init_op
    return tf.compat.v1.train.Scaffold.get_or_default(
        "ready_for_local_init_op", tf.compat.v1.GraphKeys.READY_FOR_LOCAL_INIT_OP,
        lambda: tf.compat.v1.report_uninitialized_variables(tf.compat.v1.global_variables()))


def _combined_scaffold(strategy, grouped_scaffold):
    """The model_fn's scaffold (its saver, init and summary ops), its ready-for-local-init op made per replica."""
    first = strategy.experimental_local_results(grouped_scaffold)[0]
    made = strategy.extended.call_for_each_replica(_ready_for_local_init_op, args=(grouped_scaffold,))
    ready_for_local_init = tf.nest.flatten(strategy.experimental_local_results(made))[0]
    return tf.compat.v1.train.Scaffold(ready_for_local_init_op=ready_for_local_init, copy_from_scaffold=first)


def _first_replica(strategy, grouped):
    return tuple(strategy.experimental_local_results(item)[0] for item in grouped)


def train_spec(strategy, call_model_fn, input_fn, params, config):
    """One TRAIN EstimatorSpec for the replicas, and the input hooks (see the module docstring).

    Call it inside ``strategy_scope`` in a fresh graph, after creating the global step.
    """
    replicas = strategy.extended.worker_devices
    if len(replicas) != 1:
        raise ValueError(f"bwtf's runner trains one replica per worker; this worker has {len(replicas)}")
    global_step = tf.compat.v1.train.get_global_step()
    # As Estimator: model_fn's reads of the global step in the replica see one value.
    tf.compat.v1.add_to_collection(training_util.GLOBAL_STEP_READ_KEY, strategy.extended.read_var(global_step))
    features, labels, hooks = _input(strategy, input_fn, params, config)
    grouped = strategy.extended.call_for_each_replica(
        lambda f, l: call_model_fn(f, l, spec.ModeKeys.TRAIN), args=(features, labels))
    scaled = getattr(tf.compat.v1.get_default_graph(), "_is_loss_scaled_by_optimizer", False)
    reduce_op = tf.compat.v1.distribute.get_loss_reduction() if scaled else tf.distribute.ReduceOp.SUM
    model_spec = spec.EstimatorSpec(
        spec.ModeKeys.TRAIN, loss=strategy.reduce(reduce_op, grouped.loss, axis=None),
        train_op=strategy.group(grouped.train_op), scaffold=_combined_scaffold(strategy, grouped.scaffold),
        training_hooks=_first_replica(strategy, grouped.training_hooks),
        training_chief_hooks=_first_replica(strategy, grouped.training_chief_hooks))
    return model_spec, hooks


def monitored_session(model_spec, hooks, master, config, checkpoint_path):
    """The training session of one worker under the strategy (see the module docstring)."""
    all_hooks = list(hooks)
    if config.is_chief:
        all_hooks += list(model_spec.training_chief_hooks)
        if config.log_step_count_steps:
            all_hooks.append(tf.compat.v1.train.StepCounterHook(
                every_n_steps=config.log_step_count_steps, output_dir=config.model_dir))
        if config.save_summary_steps:
            all_hooks.append(tf.compat.v1.train.SummarySaverHook(
                save_steps=config.save_summary_steps, output_dir=config.model_dir, scaffold=model_spec.scaffold))
    creator = tf.compat.v1.train.ChiefSessionCreator(
        scaffold=model_spec.scaffold, master=master, config=config.session_config(),
        checkpoint_filename_with_path=checkpoint_path)
    return tf.compat.v1.train.MonitoredSession(session_creator=creator, hooks=all_hooks)
