"""The Estimator ``model_fn``: the network, its loss, optimizer and metrics.

    model_fn(features, labels, mode, params, config=None) -> EstimatorSpec

``features`` is an image batch [N, H, W, 3] float32 of RGB values in [0, 255]
(cropped and resized by ``bwtf.estimator.inputs``; the model normalises them
by the ImageNet channel mean and deviation) or a dict holding it under "image"; ``labels`` is
int [N] (None in PREDICT). ``params`` is a ``bwtf.estimator.config.TrainConfig``
(pass it as ``tf.estimator.Estimator(model_fn, params=train_config)``).

* PREDICT: predictions ``classes`` [N] int64, ``probabilities`` [N, C] float32,
  ``top_5_classes`` [N, min(5, C)] int32, plus a "serving_default" PredictOutput.
* EVAL: metrics ``precision_at_1`` (the argmax is the label), ``precision_at_5``
  (the label is among ``top_5_classes``) and ``cross_entropy``: the mean over
  examples of the plain cross-entropy, without label smoothing or weight decay,
  so it does not change with the batch size or the training regularisers
  (bwtf-eval and the training log report it as the loss; the Estimator's own
  "loss" metric is a mean of per-batch means). Ties go to the lower class
  index, as in ``classes``: a tie never counts as a hit for several classes.
* EVAL and PREDICT always compute in float32, whatever ``precision`` trained
  the model, so the in-training evaluation, the evaluator task, bwtf-eval
  and the exported model give the same numbers for the same checkpoint.
* TRAIN: cross-entropy with label smoothing plus L2 weight decay (batch-norm
  parameters excluded), momentum SGD (optionally Nesterov) on the schedule in
  ``bwtf.estimator.config``; asynchronous ps training applies each step
  behind the task's update gate (``bwtf.ckpt.gated_update``) so checkpoints
  hold one step; SyncReplicasOptimizer with ``sync_replicas``, whose chief
  applies each aggregated update behind the update gate too
  (``training.sync_replicas.GatedApplyOptimizer``, directly inside it);
  under ``distribution="ps"`` no update applies once the global step reaches
  ``train_steps`` (``training.step_limit``), so training ends at exactly that step;
  dynamic loss scaling with precision "fp16". TensorBoard scalars: loss,
  learning_rate, train_precision_at_1, and images_per_sec from the progress hook.

The spec types come from ``bwtf.estimator.runner.spec``: tf.estimator's own
when it is installed, bwtf's otherwise. Every mode uses ``bwtf.ckpt.gathered_scaffold`` so checkpoints are read and
written by the chief only; in TRAIN the ckpt chief hooks (periodic save, final
save, walltime/signal stop) are returned as ``training_chief_hooks``; a
non-chief ps worker gets ``_worker_stop.WorkerStopHook`` so it stops on the
same signals (and ``train.py`` exits with ``ckpt.EXIT_REQUEUE``).

Precision: "bf16"/"fp16" compute in that dtype (in TRAIN) while every variable
stays float32 (a custom getter casts on read); the classifier layer, the
logits and the loss are float32. In TRAIN the model's trainable parameter
count is logged once ("resnet50: 25,557,032 trainable parameters").
``xla`` compiles the forward and backward pass with ``tf.xla.experimental.jit_scope``,
which works on CPU and GPU alike.

Also public: ``check_checkpoint_compatible(checkpoint_path, train_config)``,
which evaluate/export/train call before a restore.

Deliberately left out: the input pipeline (``inputs``), cluster wiring and
RunConfig (``train``), exporting (``export``).
"""
import contextlib

import tensorflow as tf
from absl import logging

import bwtf
from bwtf import ckpt
from bwtf.estimator import models
from bwtf.estimator.cluster import worker_stop as _worker_stop
from bwtf.estimator.runner import spec
from bwtf.estimator.training import progress as _progress
from bwtf.estimator.training import step_limit as _step_limit
from bwtf.estimator.training import sync_replicas as _sync_replicas
from bwtf.estimator.training.schedule import learning_rate

_COMPUTE_DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}
_TOP_K = 5
MODEL_SCOPE = "model"
CROSS_ENTROPY = "cross_entropy"
_CHANNEL_MEANS = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_CHANNEL_STDDEVS = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class CheckpointMismatchError(bwtf.UserError, ValueError):
    """The checkpoint was written by a different model or class count."""


def _variables_getter(getter, name, shape=None, dtype=None, *args, **kwargs):
    """Keeps every variable float32 and mirrored; casts low-precision reads.

    float32 master weights (and their updates) are what mixed precision needs,
    and make the checkpoint independent of ``precision``. Batch-norm moving
    statistics would be ON_READ variables under a collective strategy: reading
    one then all-reduces across workers, so the chief's save alone (the only
    task that saves) would block forever. ON_WRITE keeps them mirrored, averaged
    at each update, and readable by the chief on its own.
    """
    if kwargs.get("synchronization") == tf.VariableSynchronization.ON_READ:
        kwargs["synchronization"] = tf.VariableSynchronization.ON_WRITE
        kwargs["aggregation"] = tf.VariableAggregation.MEAN
    if dtype in (tf.float16, tf.bfloat16):
        variable = getter(name, shape, tf.float32, *args, **kwargs)
        return tf.cast(variable, dtype)
    return getter(name, shape, dtype, *args, **kwargs)


def build_logits(images, model_config, training, precision="fp32"):
    """The model's float32 logits for [0, 255] images; variables live under MODEL_SCOPE."""
    compute_dtype = _COMPUTE_DTYPES[precision]
    with tf.compat.v1.variable_scope(MODEL_SCOPE, custom_getter=_variables_getter):
        net = (tf.cast(images, tf.float32) - _CHANNEL_MEANS) / _CHANNEL_STDDEVS
        net = tf.cast(net, compute_dtype)
        logits = models.logits(model_config.name, net, model_config.num_classes, training)
    return tf.cast(logits, tf.float32)


def _image_from(features):
    if isinstance(features, dict):
        return features["image"]
    return features


def _predictions(logits):
    k = min(_TOP_K, logits.shape[-1])
    return {
        "classes": tf.argmax(logits, axis=1),
        "probabilities": tf.nn.softmax(logits),
        "top_5_classes": tf.nn.top_k(logits, k=k).indices,
    }


def _cross_entropy_per_example(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32), logits=logits)


def _loss(logits, labels, config):
    onehot = tf.one_hot(labels, config.model.num_classes)
    cross_entropy = tf.compat.v1.losses.softmax_cross_entropy(
        onehot, logits, label_smoothing=config.optimizer.label_smoothing)
    # Batch-norm scales and offsets are not decayed: it only shrinks them
    # towards zero without regularising the function (Goyal et al.).
    decayed = [v for v in tf.compat.v1.trainable_variables(MODEL_SCOPE)
               if "batch_normalization" not in v.name]
    if not config.optimizer.weight_decay or not decayed:
        return cross_entropy
    l2 = tf.add_n([tf.nn.l2_loss(v) for v in decayed])
    return cross_entropy + config.optimizer.weight_decay * l2


def _hits(predictions, labels):
    """Per example: 1.0 when ``labels`` is in ``predictions`` [N] or [N, K], else 0.0."""
    labels = tf.cast(labels, predictions.dtype)
    if predictions.shape.rank == 1:
        return tf.cast(tf.equal(predictions, labels), tf.float32)
    return tf.cast(tf.reduce_any(tf.equal(predictions, labels[:, None]), axis=1), tf.float32)


def _eval_metrics(logits, labels, predictions):
    """Per-example means over the whole evaluation, whatever the batch size (see module doc)."""
    return {
        "precision_at_1": tf.compat.v1.metrics.mean(_hits(predictions["classes"], labels)),
        "precision_at_5": tf.compat.v1.metrics.mean(_hits(predictions["top_5_classes"], labels)),
        CROSS_ENTROPY: tf.compat.v1.metrics.mean(_cross_entropy_per_example(logits, labels)),
    }


def _optimizer(config, lr, stripe=0):
    optimizer = tf.compat.v1.train.MomentumOptimizer(
        lr, config.optimizer.momentum, use_nesterov=config.optimizer.nesterov)
    if config.distribution == "ps":
        # Racing asynchronous workers would push the step past --train_steps.
        # Inside the loss scaling: a step skipped for overflowing gradients claims no step.
        optimizer = _step_limit.StepLimitedOptimizer(optimizer, config.train_steps, serial=config.sync_replicas)
    if config.precision == "fp16":
        optimizer = tf.compat.v1.mixed_precision.MixedPrecisionLossScaleOptimizer(
            optimizer, loss_scale="dynamic")
    if config.sync_replicas:
        # The chief's queue runner applies the aggregated update behind the
        # update gate, loss scaling and step limit included (see sync_replicas).
        optimizer = _sync_replicas.GatedApplyOptimizer(optimizer, stripe=stripe, after=[lr])
        optimizer = tf.compat.v1.train.SyncReplicasOptimizer(
            optimizer, replicas_to_aggregate=config.num_workers,
            total_num_replicas=config.num_workers)
    return optimizer


def _xla_scope(config):
    if config.xla:
        return tf.xla.experimental.jit_scope(compile_ops=True, separate_compiled_gradients=False)
    return contextlib.nullcontext()


def _update(optimizer, loss, global_step, config, stripe):
    """The train op. Asynchronous ps training applies each step behind this
    task's update gate (ckpt.gated_update), taken once the gradients are
    computed: a checkpoint's snapshot never holds half of a step."""
    if config.sync_replicas or config.distribution != "ps":
        return optimizer.minimize(loss, global_step=global_step)
    # Each gradient is sent to its variable's ps before the gate is taken, so
    # the gated part runs on the ps alone (see ckpt.gated_update).
    grads_and_vars = [(_beside(grad, var), var) for grad, var in optimizer.compute_gradients(loss)]
    return ckpt.gated_update(
        lambda: optimizer.apply_gradients(grads_and_vars, global_step=global_step),
        stripe=stripe, after=[g for g, _ in grads_and_vars])


def _beside(grad, var):
    """``grad`` copied to ``var``'s device (outside any XLA cluster); None stays None."""
    if grad is None:
        return None
    with tf.xla.experimental.jit_scope(compile_ops=False), tf.compat.v1.device(var.device):
        if isinstance(grad, tf.IndexedSlices):
            return tf.IndexedSlices(tf.identity(grad.values), tf.identity(grad.indices), grad.dense_shape)
        return tf.identity(grad)


def _stripe(config):
    """This task's index in the training cluster (chief 0, worker i: i + 1)."""
    index = getattr(config, "global_id_in_cluster", None)
    if isinstance(index, int):
        return index
    task_id = getattr(config, "task_id", 0) or 0
    return 0 if getattr(config, "task_type", None) in (None, "chief") else task_id + 1


def _train_spec(config, logits, labels, loss, scaffold, model_dir, is_chief, stripe=0):
    global_step = tf.compat.v1.train.get_or_create_global_step()
    lr = learning_rate(global_step, config)
    # Made before the optimizer and its wrappers add ops: a summary's tag is
    # its op name, uniquified ("learning_rate_1") if that name is taken.
    tf.compat.v1.summary.scalar("learning_rate", lr)
    optimizer = _optimizer(config, lr, stripe)
    with tf.control_dependencies(tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)):
        with _xla_scope(config):
            train_op = _update(optimizer, loss, global_step, config, stripe)
    precision_at_1 = tf.reduce_mean(_hits(tf.argmax(logits, axis=1), labels))
    tf.compat.v1.summary.scalar("train_precision_at_1", precision_at_1)
    progress = _progress.ProgressHook(
        loss=loss, learning_rate=lr, precision_at_1=precision_at_1, config=config,
        summary_dir=model_dir if is_chief else None)
    training_hooks = [progress]
    chief_hooks = list(ckpt.chief_hooks(model_dir, scaffold, _policy(config)))
    if config.sync_replicas:
        training_hooks.append(optimizer.make_session_run_hook(is_chief=is_chief))
        chief_hooks.append(_sync_replicas.ReleaseQueueRunnersHook())
    if not is_chief and config.distribution == "ps":
        # Only the chief saves; a worker just stops with it (see _worker_stop).
        policy = _policy(config)
        training_hooks.append(_worker_stop.WorkerStopHook(policy.stop_signals, policy.walltime_margin_secs))
    return spec.EstimatorSpec(
        spec.ModeKeys.TRAIN, loss=loss, train_op=train_op, scaffold=scaffold,
        training_hooks=training_hooks, training_chief_hooks=chief_hooks)


def _log_parameter_count(model_name):
    if model_name in _COUNTED:
        return
    _COUNTED.add(model_name)
    count = models.parameter_count(tf.compat.v1.trainable_variables(MODEL_SCOPE))
    logging.info("%s: %s trainable parameters", model_name, f"{count:,}", extra=bwtf.CONSOLE)


# Models whose parameter count this process has logged: once is enough.
_COUNTED = set()


def _policy(config):
    return config.checkpoint_policy if config.checkpoint_policy is not None else ckpt.CheckpointPolicy()


def model_fn(features, labels, mode, params, config=None):
    """Builds the EstimatorSpec for ``mode``; see the module docstring."""
    train_config = params
    model_dir = train_config.model_dir or (config.model_dir if config is not None else None)
    training = mode == spec.ModeKeys.TRAIN
    # Evaluation and serving in float32: see the module docstring.
    precision = train_config.precision if training else "fp32"
    with _xla_scope(train_config):
        logits = build_logits(_image_from(features), train_config.model, training, precision)
    if training:
        _log_parameter_count(train_config.model.name)
    scaffold = ckpt.gathered_scaffold(model_dir, _policy(train_config), device=train_config.checkpoint_device,
                                      quiet_restores=not training, snapshots=training)
    predictions = _predictions(logits)
    if mode == spec.ModeKeys.PREDICT:
        return spec.EstimatorSpec(
            mode, predictions=predictions, scaffold=scaffold,
            export_outputs={"serving_default": spec.PredictOutput(predictions)})
    if mode == spec.ModeKeys.EVAL:
        return spec.EstimatorSpec(
            mode, loss=tf.reduce_mean(_cross_entropy_per_example(logits, labels)), predictions=predictions,
            scaffold=scaffold, eval_metric_ops=_eval_metrics(logits, labels, predictions))
    loss = _loss(logits, labels, train_config)
    is_chief = config.is_chief if config is not None else True
    return _train_spec(train_config, logits, labels, loss, scaffold, model_dir, is_chief,
                       _stripe(config))


def model_variable_shapes(train_config):
    """{variable name: shape} of the model's trainable and batch-norm variables."""
    size = train_config.model.image_size
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, size, size, 3])
        build_logits(images, train_config.model, training=False)
        return {v.op.name: tuple(v.shape.as_list()) for v in tf.compat.v1.global_variables()}


def _some(names, shown=3):
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _unexpected_variables(stored, expected):
    """The checkpoint's model variables this model lacks (optimizer slots of its own ones excepted)."""
    def belongs(name):
        parts = name.split("/")
        return any("/".join(parts[:end]) in expected for end in range(1, len(parts) + 1))
    return sorted(name for name in stored if name.startswith(MODEL_SCOPE + "/") and not belongs(name))


def check_checkpoint_compatible(checkpoint_path, train_config):
    """Raises CheckpointMismatchError unless the checkpoint fits this model and class count.

    The error names the model's variables the checkpoint lacks and the model
    variables it has that this model does not (e.g. a checkpoint of another
    model, or of a layout bwtf never wrote).
    """
    stored = dict(tf.train.list_variables(checkpoint_path))
    expected = model_variable_shapes(train_config)
    missing = sorted(set(expected) - set(stored))
    if missing:
        unexpected = _unexpected_variables(stored, expected)
        extra = f"; it has {len(unexpected)} the model does not ({_some(unexpected)})" if unexpected else ""
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint_path} was not written by model {train_config.model.name!r}: "
            f"it lacks {len(missing)} of its {len(expected)} variables ({_some(missing)}){extra}. "
            "Use the --model it was trained with, or a fresh --model_dir.")
    wrong = [(name, tuple(stored[name]), shape) for name, shape in sorted(expected.items())
             if tuple(stored[name]) != shape]
    if wrong:
        name, found, shape = wrong[0]
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint_path} does not match model {train_config.model.name!r} with "
            f"{train_config.model.num_classes} classes at {name}: checkpoint shape {list(found)}, "
            f"model shape {list(shape)}. Use the class count and model it was trained with, "
            "or a fresh --model_dir.")
