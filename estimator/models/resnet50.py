"""ResNet-50 v1.5: the stride-2 sits on the 3x3 conv of each bottleneck.

That is the variant NVIDIA and the MLPerf reference train (about 0.5%
better top-1 than v1, where the stride sits on the first 1x1). The last
batch norm of every residual branch starts at zero, so each block starts
as the identity (Goyal et al., large-batch training).
"""
import tensorflow as tf

from bwtf.estimator.models import _layers

MIN_IMAGE_SIZE = 32
DEFAULT_IMAGE_SIZE = 224
EVAL_CROP = "resize_shorter_side"
# tensorflow/models official ResNet (resnet_run_loop.learning_rate_with_decay as
# imagenet_main calls it): 0.1 per 256 images, 5 warmup epochs, x0.1 at epochs
# 30, 60 and 80 of 90, weight decay 1e-4, momentum 0.9, no label smoothing.
RECIPE = dict(base_lr=0.1, decay="step", decay_boundaries=(30 / 90, 60 / 90, 80 / 90), weight_decay=1e-4,
              label_smoothing=0.0, warmup_fraction=5 / 90)
_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))


def _bottleneck(inputs, filters, strides, training, project):
    shortcut = inputs
    if project:
        with tf.compat.v1.variable_scope("projection"):
            shortcut = _layers.conv(inputs, 4 * filters, 1, strides)
            shortcut = _layers.batch_norm(shortcut, training)
    net = _layers.conv_bn_relu(inputs, filters, 1, training, name="a")
    net = _layers.conv_bn_relu(net, filters, 3, training, strides=strides, name="b")
    with tf.compat.v1.variable_scope("c"):
        net = _layers.conv(net, 4 * filters, 1)
        net = _layers.batch_norm(net, training, zero_init=True)
    return tf.nn.relu(net + shortcut)


def logits(images, num_classes, training):
    net = _layers.conv_bn_relu(images, 64, 7, training, strides=2, name="conv1")
    net = _layers.max_pool(net, 3, 2, padding="same")
    for stage, (filters, blocks) in enumerate(_STAGES):
        for block in range(blocks):
            strides = 2 if (block == 0 and stage > 0) else 1
            with tf.compat.v1.variable_scope(f"stage{stage + 1}/block{block + 1}"):
                net = _bottleneck(net, filters, strides, training, project=(block == 0))
    net = _layers.global_average_pool(net)
    return _layers.classifier(net, num_classes)
