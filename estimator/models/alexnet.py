"""AlexNet (one-tower, with batch norm instead of local response normalisation).

Batch norm replaces LRN, as in the "AlexNet-BN" variant most TF benchmarks
used, so the model trains at the same learning rates as the others. Dropout
is kept in the classifier. Native input size 224 (227 in the paper; the
difference is absorbed by ``same`` padding of the first conv).
"""
import tensorflow as tf

from bwtf.estimator.models import _layers

MIN_IMAGE_SIZE = 64
DEFAULT_IMAGE_SIZE = 224
_DROPOUT = 0.5


def logits(images, num_classes, training):
    pool = tf.compat.v1.layers.max_pooling2d
    net = _layers.conv_bn_relu(images, 64, 11, training, strides=4, name="conv1")
    net = pool(net, 3, 2, padding="same")
    net = _layers.conv_bn_relu(net, 192, 5, training, name="conv2")
    net = pool(net, 3, 2, padding="same")
    net = _layers.conv_bn_relu(net, 384, 3, training, name="conv3")
    net = _layers.conv_bn_relu(net, 256, 3, training, name="conv4")
    net = _layers.conv_bn_relu(net, 256, 3, training, name="conv5")
    net = pool(net, 3, 2, padding="same")
    net = tf.compat.v1.layers.flatten(net)
    for index in (6, 7):
        net = tf.nn.relu(_layers.dense(net, 4096, name=f"fc{index}"))
        net = tf.compat.v1.layers.dropout(net, _DROPOUT, training=training)
    return _layers.dense(net, num_classes, name="logits")
