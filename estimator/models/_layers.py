"""The layers of bwtf's models, over ``tf.compat.v1.get_variable`` and ``tf.nn``, without Keras.

TensorFlow 2.16 and later have no ``tf.compat.v1.layers`` (it needs Keras 2),
so the models use these functions on every TensorFlow bwtf supports. They
reproduce what ``tf.compat.v1.layers`` built on 2.15, because checkpoints
written by it must keep restoring, and training must not change:

* the same variables: a layer opens ``variable_scope(None, default_name=base)``
  as a v1 layer did, so the scopes are uniquified the same way (``conv2d``,
  ``conv2d_1``, ... or the given name), and creates the same names, shapes,
  dtypes, initializers and trainability, in the same order, through the
  enclosing scope (so ``model_fn``'s custom getter keeps every variable
  float32 whatever the compute dtype);
* the same ops: ``tf.nn.convolution`` + ``bias_add``, ``matmul``, the fused
  batch norm with its moving averages updated by ``assign_sub`` ops in the
  ``UPDATE_OPS`` collection (decay computed as ``1 - momentum`` in float32,
  as Keras did in graph mode), ``max_pool``/``avg_pool``, ``nn.dropout``;
* no regularizer on any variable (weight decay is ``model_fn``'s, by name).

``tests/estimator/test_estimator_layers.py`` checks them against
``tf.compat.v1.layers`` on the same weights. Graph mode, channels_last (NHWC)
only, ``training`` a Python bool: that is all the models need. Deliberately
left out: channels_first, reuse, partitioners, constraints, masks.
"""
import math

import tensorflow as tf

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def _scope(name, base_name):
    """The variable scope a v1 layer opened: ``name`` (or ``base_name``), uniquified in the enclosing one."""
    return tf.compat.v1.variable_scope(None, default_name=name or base_name)


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _check_training(training):
    if not isinstance(training, bool):
        raise TypeError(f"training must be a Python bool (graph mode), got {training!r}")


def _moving_average_update(variable, value, momentum, batch_size):
    """``variable -= (variable - value) * (1 - momentum)``: Keras's graph-mode update, op for op.

    The decay is ``1 - momentum`` computed in float32 (0.100000024 for 0.9), as
    Keras computed it; ``batch_size`` (or None) skips the update for an empty batch.
    """
    with tf.name_scope("AssignMovingAvg") as scope:
        with tf.compat.v1.colocate_with(variable):
            decay = tf.convert_to_tensor(1.0 - tf.convert_to_tensor(momentum), name="decay")
            delta = (variable - tf.cast(value, variable.dtype)) * tf.cast(decay, variable.dtype.base_dtype)
            if batch_size is not None:
                delta = tf.where(batch_size > 0, delta, tf.zeros_like(delta))
            return tf.compat.v1.assign_sub(variable, delta, name=scope)


def _partial_batch_size(inputs):
    """The batch size when a strategy may feed empty batches (Keras then skipped the update), else None."""
    if not tf.distribute.has_strategy():
        return None
    extended = tf.distribute.get_strategy().extended
    partial = getattr(extended, "enable_partial_batch_handling",
                      getattr(extended, "experimental_enable_get_next_as_optional", False))
    return tf.shape(inputs)[0] if partial else None


def batch_norm(inputs, training, name=None, zero_init=False):
    """Fused batch norm over the last axis; ``zero_init`` starts a residual branch as identity.

    Parameters and moving statistics are float32 even for float16/bfloat16
    inputs. In training the batch statistics normalize and the moving mean and
    variance get one update each, added to ``UPDATE_OPS`` (``model_fn`` runs
    them with the train op).
    """
    _check_training(training)
    channels = inputs.shape[-1]
    with _scope(name, "batch_normalization"):
        gamma = tf.compat.v1.get_variable(
            "gamma", [channels], tf.float32, trainable=True,
            initializer=tf.compat.v1.zeros_initializer() if zero_init else tf.compat.v1.ones_initializer())
        beta = tf.compat.v1.get_variable("beta", [channels], tf.float32, tf.compat.v1.zeros_initializer(),
                                         trainable=True)
        statistics = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                          aggregation=tf.VariableAggregation.MEAN)
        moving_mean = tf.compat.v1.get_variable("moving_mean", [channels], tf.float32,
                                                tf.compat.v1.zeros_initializer(), **statistics)
        moving_variance = tf.compat.v1.get_variable("moving_variance", [channels], tf.float32,
                                                    tf.compat.v1.ones_initializer(), **statistics)
        if not training:
            output, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=moving_mean, variance=moving_variance, epsilon=_BN_EPSILON,
                is_training=False, data_format="NHWC")
            return output
        output, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs, gamma, beta, mean=moving_mean, variance=moving_variance, epsilon=_BN_EPSILON,
            is_training=True, data_format="NHWC")
        batch_size = _partial_batch_size(inputs)
        for update in (_moving_average_update(moving_mean, mean, _BN_MOMENTUM, batch_size),
                       _moving_average_update(moving_variance, variance, _BN_MOMENTUM, batch_size)):
            tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.UPDATE_OPS, update)
        return output


def conv(inputs, filters, kernel_size, strides=1, padding="same", name=None, use_bias=False):
    """A 2D convolution, He-initialised (fan_out); no bias by default (batch norm follows)."""
    kernel_shape = list(_pair(kernel_size)) + [inputs.shape[-1], filters]
    with _scope(name, "conv2d"):
        kernel = tf.compat.v1.get_variable(
            "kernel", kernel_shape, inputs.dtype, trainable=True,
            initializer=tf.compat.v1.variance_scaling_initializer(scale=2.0, mode="fan_out"))
        bias = (tf.compat.v1.get_variable("bias", [filters], inputs.dtype, tf.compat.v1.zeros_initializer(),
                                          trainable=True) if use_bias else None)
        outputs = tf.nn.convolution(inputs, kernel, strides=list(_pair(strides)), padding=padding.upper(),
                                    dilations=[1, 1], data_format="NHWC", name="Conv2D")
        return outputs if bias is None else tf.nn.bias_add(outputs, bias, data_format="NHWC")


def conv_bn_relu(inputs, filters, kernel_size, training, strides=1, padding="same", name=None):
    """Convolution, batch norm and ReLU under one variable scope ``name``."""
    with tf.compat.v1.variable_scope(name, default_name="conv_bn"):
        net = conv(inputs, filters, kernel_size, strides, padding)
        net = batch_norm(net, training)
        return tf.nn.relu(net)


def dense(inputs, units, name=None):
    """A fully connected layer on [N, features]: small-normal init, with a bias."""
    with _scope(name, "dense"):
        kernel = tf.compat.v1.get_variable(
            "kernel", [inputs.shape[-1], units], inputs.dtype, trainable=True,
            initializer=tf.compat.v1.random_normal_initializer(stddev=0.01))
        bias = tf.compat.v1.get_variable("bias", [units], inputs.dtype, tf.compat.v1.zeros_initializer(),
                                         trainable=True)
        return tf.nn.bias_add(tf.matmul(inputs, kernel), bias)


def classifier(inputs, num_classes):
    """The last layer, ``logits``, computed in float32 whatever the compute dtype.

    bf16 keeps 8 bits of mantissa: logits rounded to it tie often, and a tie
    for the top score would make precision@1 depend on how ties are broken.
    The float32 matmul costs one layer of the network.
    """
    return dense(tf.cast(inputs, tf.float32), num_classes, name="logits")


def max_pool(inputs, size, strides, padding):
    return tf.nn.max_pool2d(inputs, _pair(size), _pair(strides), padding.upper(), data_format="NHWC")


def average_pool(inputs, size, strides, padding):
    """Average pooling; with "same" padding a window averages only the cells inside the image."""
    return tf.nn.avg_pool2d(inputs, _pair(size), _pair(strides), padding.upper(), data_format="NHWC")


def dropout(inputs, rate, training):
    """Drops ``rate`` of the values (scaling the rest) in training; the identity otherwise."""
    _check_training(training)
    return tf.nn.dropout(inputs, rate=rate) if training else tf.identity(inputs)


def flatten(inputs):
    """[N, ...] to [N, features]."""
    return tf.reshape(inputs, [-1, math.prod(inputs.shape[1:])])


def global_average_pool(inputs):
    return tf.reduce_mean(inputs, axis=[1, 2])
