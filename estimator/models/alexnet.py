"""AlexNet exactly as torchvision's ``alexnet`` ("one weird trick" single-tower variant).

The reference is torchvision's model definition (Krizhevsky 2014, "One weird
trick for parallelizing convolutional neural networks"): five convolutions
with biases and ReLU, no normalisation layer, max pooling 3x3/2 with valid
padding after conv1, conv2 and conv5, an adaptive average pool to 6x6, then
dropout, fc6 (9,216 x 4,096), dropout, fc7 (4,096 x 4,096) and the classifier.
At 1,000 classes that is 61,100,840 trainable parameters, torchvision's
published figure (``tests/estimator/test_estimator_recipe.py`` checks it).

conv1 pads 2 pixels on each side before its 11x11/4 window, as torchvision
does: a 224 input gives 55x55 after conv1 and 6x6 after pool5, so the 6x6
pool is the identity at the native size and only matters at other sizes (it
keeps fc6 at 9,216 inputs whatever ``image_size`` is). Without batch norm
this network wants a tenfold smaller learning rate than ResNet: its training
recipe (``RECIPE``, torchvision's references/classification) says so.
"""
import tensorflow as tf

from bwtf.estimator.models import _layers

MIN_IMAGE_SIZE = 63
DEFAULT_IMAGE_SIZE = 224
EVAL_CROP = "resize_shorter_side"
# torchvision references/classification (its AlexNet was trained with the
# defaults there): SGD 0.01 at batch 256, momentum 0.9, weight decay 1e-4,
# x0.1 every 30 of 90 epochs, no label smoothing.
RECIPE = dict(base_lr=0.01, decay="step", decay_boundaries=(30 / 90, 60 / 90), weight_decay=1e-4,
              label_smoothing=0.0, warmup_fraction=0.0)
_DROPOUT = 0.5
_POOLED_SIDE = 6


def _conv_relu(net, filters, kernel, strides=1, padding="same", name=None):
    return tf.nn.relu(_layers.conv(net, filters, kernel, strides, padding, name=name, use_bias=True))


def _adaptive_average_pool(net, side):
    """torchvision's AdaptiveAvgPool2d: bin i spans [floor(i*H/side), ceil((i+1)*H/side))."""
    height, width = net.shape[1], net.shape[2]
    if (height, width) == (side, side):
        return net
    rows = []
    for i in range(side):
        top, bottom = i * height // side, -(-(i + 1) * height // side)
        cells = []
        for j in range(side):
            left, right = j * width // side, -(-(j + 1) * width // side)
            cells.append(tf.reduce_mean(net[:, top:bottom, left:right, :], axis=[1, 2]))
        rows.append(tf.stack(cells, axis=1))
    return tf.stack(rows, axis=1)


def logits(images, num_classes, training):
    pool = _layers.max_pool
    net = tf.pad(images, [[0, 0], [2, 2], [2, 2], [0, 0]])
    net = _conv_relu(net, 64, 11, strides=4, padding="valid", name="conv1")
    net = pool(net, 3, 2, padding="valid")
    net = _conv_relu(net, 192, 5, name="conv2")
    net = pool(net, 3, 2, padding="valid")
    net = _conv_relu(net, 384, 3, name="conv3")
    net = _conv_relu(net, 256, 3, name="conv4")
    net = _conv_relu(net, 256, 3, name="conv5")
    net = pool(net, 3, 2, padding="valid")
    net = _layers.flatten(_adaptive_average_pool(net, _POOLED_SIDE))
    for index in (6, 7):
        net = _layers.dropout(net, _DROPOUT, training=training)
        net = tf.nn.relu(_layers.dense(net, 4096, name=f"fc{index}"))
    return _layers.classifier(net, num_classes)
