"""The model builders: ``logits(name, images, num_classes, training)``.

Every model is a function from a float NHWC image batch to unscaled logits,
built with bwtf's own layer functions (``_layers``: ``tf.compat.v1.get_variable``
and ``tf.nn``, no Keras, so the same code builds on TensorFlow 2.15 and 2.21)
inside the caller's graph (``model_fn`` calls it; nothing here owns a graph, a
session or a loss). Models:

  resnet50      ResNet-50 v1.5 (stride on the 3x3 conv), native 224, 25,557,032 parameters
  inception_v3  Inception v3 without the auxiliary head, native 299, min 75, 23,834,568
  alexnet       torchvision's AlexNet, native 224, 61,100,840
  small_cnn     a four-block CNN for CPU demos and tests, native 64, 125,688

(trainable parameters at 1,000 classes). Each model module also states:

  EVAL_CROP  how evaluation and serving crop an image for it: "resize_shorter_side"
             (the ResNet protocol: shorter side to 256/224 of the input size,
             keeping the aspect ratio, then the central square) or
             "central_fraction" (Inception's: the central 87.5 % of each side,
             resized to the input size); ``bwtf.estimator.inputs`` implements both.
  RECIPE     its reference training recipe, as ``OptimizerConfig`` fields plus
             ``warmup_fraction`` (of train_steps), with the source in a comment;
             ``bwtf.estimator.config.optimizer_for_model`` applies it.

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


def eval_crop(name):
    """"resize_shorter_side" or "central_fraction" (see the module docstring)."""
    return _module(name).EVAL_CROP


def recipe(name):
    """The model's reference training recipe: a dict of OptimizerConfig fields and warmup_fraction."""
    return dict(_module(name).RECIPE)


def parameter_count(variables):
    """How many numbers ``variables`` hold (e.g. the trainable variables of a built model)."""
    return sum(variable.shape.num_elements() for variable in variables)


def logits(name, images, num_classes, training):
    """Builds model ``name`` on ``images`` [N, H, W, 3] and returns [N, num_classes] logits."""
    return _module(name).logits(images, num_classes, training)
