"""Layer shortcuts shared by the model builders: conv + batch norm + ReLU.

Plain ``tf.compat.v1.layers`` in graph mode, channels_last only (the CPU and
cuDNN kernels TF 2.15 picks for NHWC are the fast ones, and one layout keeps
checkpoints interchangeable). Variables are created through the enclosing
variable scope, so the mixed-precision getter installed by ``model_fn`` keeps
them in float32 whatever the compute dtype is.
"""
import tensorflow as tf

_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5
_v1_layers = tf.compat.v1.layers


def batch_norm(inputs, training, name=None, zero_init=False):
    """Fused batch norm; ``zero_init`` starts a residual branch as identity."""
    return _v1_layers.batch_normalization(
        inputs,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        gamma_initializer=tf.compat.v1.zeros_initializer() if zero_init else tf.compat.v1.ones_initializer(),
        training=training,
        fused=True,
        name=name,
    )


def conv(inputs, filters, kernel_size, strides=1, padding="same", name=None, use_bias=False):
    """A He-initialised 2D convolution (no bias: batch norm follows)."""
    return _v1_layers.conv2d(
        inputs,
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=tf.compat.v1.variance_scaling_initializer(scale=2.0, mode="fan_out"),
        name=name,
    )


def conv_bn_relu(inputs, filters, kernel_size, training, strides=1, padding="same", name=None):
    """Convolution, batch norm and ReLU under one variable scope ``name``."""
    with tf.compat.v1.variable_scope(name, default_name="conv_bn"):
        net = conv(inputs, filters, kernel_size, strides, padding)
        net = batch_norm(net, training)
        return tf.nn.relu(net)


def dense(inputs, units, name=None):
    """A fully connected layer: small-normal init, with a bias."""
    return _v1_layers.dense(
        inputs,
        units,
        kernel_initializer=tf.compat.v1.random_normal_initializer(stddev=0.01),
        name=name,
    )


def classifier(inputs, num_classes):
    """The last layer, ``logits``, computed in float32 whatever the compute dtype.

    bf16 keeps 8 bits of mantissa: logits rounded to it tie often, and a tie
    for the top score would make precision@1 depend on how ties are broken.
    The float32 matmul costs one layer of the network.
    """
    return dense(tf.cast(inputs, tf.float32), num_classes, name="logits")


def global_average_pool(inputs):
    return tf.reduce_mean(inputs, axis=[1, 2])
