"""Inception v3 (Szegedy et al. 2015), the layout of TF-slim's ``inception_v3``.

Left out on purpose: the auxiliary classifier head. It only adds a second loss
term during training, makes the checkpoint incompatible between "with" and
"without" runs, and TF-slim's own ImageNet numbers show it changes top-1 by
well under a percent. The stem uses ``valid`` padding as in the paper, so the
smallest input is 75x75 (native 299x299).
"""
import tensorflow as tf

from bwtf.estimator.models import _layers

MIN_IMAGE_SIZE = 75
DEFAULT_IMAGE_SIZE = 299
EVAL_CROP = "central_fraction"
# bwtf trains with momentum SGD only, so the paper's RMSProp schedule (0.045,
# x0.94 every 2 epochs) is not reproduced: the ResNet schedule above is used
# with Inception's own regularisers, label smoothing 0.1 (Szegedy et al. 2016,
# section 7) and TF-slim's inception_v3_arg_scope weight decay 4e-5.
RECIPE = dict(base_lr=0.1, decay="step", decay_boundaries=(30 / 90, 60 / 90, 80 / 90), weight_decay=4e-5,
              label_smoothing=0.1, warmup_fraction=5 / 90)
_DROPOUT = 0.2


def _cbr(net, filters, kernel, training, strides=1, padding="same"):
    return _layers.conv_bn_relu(net, filters, kernel, training, strides=strides, padding=padding)


def _avg_pool_branch(net, filters, training):
    net = _layers.average_pool(net, 3, 1, padding="same")
    return _cbr(net, filters, 1, training)


def _block_35(net, pool_filters, training):
    branches = [
        _cbr(net, 64, 1, training),
        _cbr(_cbr(net, 48, 1, training), 64, 5, training),
        _cbr(_cbr(_cbr(net, 64, 1, training), 96, 3, training), 96, 3, training),
        _avg_pool_branch(net, pool_filters, training),
    ]
    return tf.concat(branches, axis=3)


def _reduction_a(net, training):
    deep = _cbr(_cbr(net, 64, 1, training), 96, 3, training)
    branches = [
        _cbr(net, 384, 3, training, strides=2, padding="valid"),
        _cbr(deep, 96, 3, training, strides=2, padding="valid"),
        _layers.max_pool(net, 3, 2, padding="valid"),
    ]
    return tf.concat(branches, axis=3)


def _block_17(net, width, training):
    seven = _cbr(_cbr(_cbr(net, width, 1, training), width, (1, 7), training), 192, (7, 1), training)
    double = _cbr(net, width, 1, training)
    for kernel in ((7, 1), (1, 7), (7, 1)):
        double = _cbr(double, width, kernel, training)
    branches = [
        _cbr(net, 192, 1, training),
        seven,
        _cbr(double, 192, (1, 7), training),
        _avg_pool_branch(net, 192, training),
    ]
    return tf.concat(branches, axis=3)


def _reduction_b(net, training):
    short = _cbr(net, 192, 1, training)
    long = _cbr(_cbr(_cbr(net, 192, 1, training), 192, (1, 7), training), 192, (7, 1), training)
    branches = [
        _cbr(short, 320, 3, training, strides=2, padding="valid"),
        _cbr(long, 192, 3, training, strides=2, padding="valid"),
        _layers.max_pool(net, 3, 2, padding="valid"),
    ]
    return tf.concat(branches, axis=3)


def _split_1x3_3x1(net, training):
    return tf.concat([_cbr(net, 384, (1, 3), training), _cbr(net, 384, (3, 1), training)], axis=3)


def _block_8(net, training):
    branches = [
        _cbr(net, 320, 1, training),
        _split_1x3_3x1(_cbr(net, 384, 1, training), training),
        _split_1x3_3x1(_cbr(_cbr(net, 448, 1, training), 384, 3, training), training),
        _avg_pool_branch(net, 192, training),
    ]
    return tf.concat(branches, axis=3)


def _stem(images, training):
    net = _cbr(images, 32, 3, training, strides=2, padding="valid")
    net = _cbr(net, 32, 3, training, padding="valid")
    net = _cbr(net, 64, 3, training)
    net = _layers.max_pool(net, 3, 2, padding="valid")
    net = _cbr(net, 80, 1, training, padding="valid")
    net = _cbr(net, 192, 3, training, padding="valid")
    return _layers.max_pool(net, 3, 2, padding="valid")


def logits(images, num_classes, training):
    scope = tf.compat.v1.variable_scope
    net = _stem(images, training)
    for name, pool_filters in (("mixed_5b", 32), ("mixed_5c", 64), ("mixed_5d", 64)):
        with scope(name):
            net = _block_35(net, pool_filters, training)
    with scope("mixed_6a"):
        net = _reduction_a(net, training)
    for name, width in (("mixed_6b", 128), ("mixed_6c", 160), ("mixed_6d", 160), ("mixed_6e", 192)):
        with scope(name):
            net = _block_17(net, width, training)
    with scope("mixed_7a"):
        net = _reduction_b(net, training)
    for name in ("mixed_7b", "mixed_7c"):
        with scope(name):
            net = _block_8(net, training)
    net = _layers.global_average_pool(net)
    net = _layers.dropout(net, _DROPOUT, training=training)
    return _layers.classifier(net, num_classes)
