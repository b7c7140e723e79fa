"""A four-block CNN for CPU demos and tests (125,688 parameters at 1,000 classes).

Big enough to reach >0.95 precision@1 on the 10-class digits sample archive
in a few hundred steps; deliberately nothing like an ImageNet model.
"""
import tensorflow as tf

from bwtf.estimator.models import _layers

MIN_IMAGE_SIZE = 16
DEFAULT_IMAGE_SIZE = 64
EVAL_CROP = "resize_shorter_side"
# No reference: what trains the digits in a few hundred steps.
RECIPE = dict(base_lr=0.2, decay="cosine", weight_decay=1e-4, label_smoothing=0.1, warmup_fraction=0.0)


def logits(images, num_classes, training):
    net = images
    for index, filters in enumerate((16, 32, 64, 64)):
        net = _layers.conv_bn_relu(net, filters, 3, training, name=f"block{index + 1}")
        net = _layers.max_pool(net, 2, 2, padding="same")
    net = _layers.global_average_pool(net)
    return _layers.classifier(net, num_classes)
