"""The model builders: ``logits(name, images, num_classes, training)``.

Every model is a function from a float NHWC image batch to unscaled logits,
built with plain ``tf.compat.v1.layers`` inside the caller's graph (``model_fn``
calls it; nothing here owns a graph, a session or a loss). Models:

  resnet50      ResNet-50 v1.5 (stride on the 3x3 conv), native 224
  inception_v3  Inception v3 without the auxiliary head, native 299, min 75
  alexnet       AlexNet with batch norm, native 224
  small_cnn     a four-block CNN for CPU demos and tests, native 64

Deliberately left out: channels_first, pretrained weights, Keras models.
"""
import bwtf
from bwtf.estimator.models import alexnet, inception_v3, resnet50, small_cnn

_MODULES = {
    "resnet50": resnet50,
    "inception_v3": inception_v3,
    "alexnet": alexnet,
    "small_cnn": small_cnn,
}
MODEL_NAMES = tuple(_MODULES)


class UnknownModelError(bwtf.UserError, ValueError):
    """The model name is not one of MODEL_NAMES."""


def _module(name):
    if name not in _MODULES:
        raise UnknownModelError(
            f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
    return _MODULES[name]


def default_image_size(name):
    """The side length the model was designed for (e.g. 224 for resnet50)."""
    return _module(name).DEFAULT_IMAGE_SIZE


def min_image_size(name):
    """The smallest side length the model's strides and valid paddings accept."""
    return _module(name).MIN_IMAGE_SIZE


def logits(name, images, num_classes, training):
    """Builds model ``name`` on ``images`` [N, H, W, 3] and returns [N, num_classes] logits."""
    return _module(name).logits(images, num_classes, training)
