"""The configuration that ``model_fn`` and the input functions receive.

These frozen dataclasses are the only way configuration reaches library code:
``train.py`` (and evaluate/export) turn absl flags into them once, and
``tf.estimator.Estimator(params=TrainConfig(...))`` hands the ``TrainConfig``
to ``model_fn`` as ``params``. Nothing here reads flags, the environment or
files.

    ModelConfig(name, num_classes, image_size, class_names=(), label_texts=())
    OptimizerConfig(base_lr=0.1, lr_scaling="linear", warmup_steps=0,
                    decay="cosine", decay_boundaries=(30/90, 60/90, 80/90),
                    decay_factor=0.1, weight_decay=1e-4, label_smoothing=0.1,
                    momentum=0.9, nesterov=False)
    optimizer_for_model(model_name, train_steps, **overrides) -> OptimizerConfig
    TrainConfig(model, optimizer=OptimizerConfig(), batch_size=32,
                num_workers=1, train_steps=1000, precision="fp32", xla=False,
                distribution="none", sync_replicas=False, model_dir=None,
                checkpoint_policy=None, checkpoint_device=None,
                log_every_steps=100)
    DatasetConfig(name="imagenet_archive", data_dir=None, image_size=224,
                  num_classes=None, use_synthetic_data=False,
                  use_bbox_crop=False, train_split="train",
                  eval_split="validation", shuffle_buffer=10000, seed=None,
                  min_crop_area=0.08, eval_crop="resize_shorter_side")

Learning rate (``OptimizerConfig``): the peak LR is ``base_lr`` scaled by
``lr_scaling`` over the batch of one update (``TrainConfig.update_batch_size``):
the per-worker batch for asynchronous ps training, where each worker applies
its own gradient, and the global batch (``batch_size * num_workers``) for
``sync_replicas`` and ``collective``, where one update averages every worker's.
``linear`` gives base_lr * update_batch / 256 (Goyal et al.; 8 async workers
x 256 train at 0.1, 8 synchronous ones at 0.8), ``sqrt`` gives base_lr *
sqrt(workers averaged per update) (the original Blue Waters scripts: 0.4 *
sqrt(workers) with base_lr=0.4), ``none`` gives base_lr. It ramps linearly
from 0 over ``warmup_steps``, then decays over the remaining steps:
``cosine`` to zero, ``step`` multiplies by ``decay_factor`` at each fraction
of ``train_steps`` in ``decay_boundaries``, ``constant`` keeps it.

Defaults per model: ``optimizer_for_model`` starts from the model's reference
recipe (``bwtf.estimator.models.recipe``: ResNet-50 from tensorflow/models'
official ResNet, 0.1 per 256 images, 5 warmup epochs, x0.1 at epochs 30, 60,
80 of 90; AlexNet from torchvision's references, 0.01 per 256, x0.1 every 30
epochs; the sources are in each model's module) with warmup and boundaries as
fractions of ``train_steps`` (so ``train_steps`` = 90 epochs reproduces the
reference), and any field given overrides it.

Deliberately left out: validation that needs I/O (whether data_dir holds the
dataset, whether model_dir is writable); ``inputs`` and ``train`` do that.
"""
import dataclasses
import math
from typing import Any, Optional, Tuple

import bwtf
from bwtf.estimator import models

PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTIONS = ("ps", "collective", "none")
LR_SCALINGS = ("linear", "sqrt", "none")
LR_DECAYS = ("cosine", "step", "constant")
EVAL_CROPS = ("resize_shorter_side", "central_fraction")
_LINEAR_SCALING_REFERENCE_BATCH = 256


class ConfigError(bwtf.UserError, ValueError):
    """A configuration value is out of range; the message names the field."""


def _require(condition, message):
    if not condition:
        raise ConfigError(message)


def _require_choice(field, value, choices):
    _require(value in choices, f"{field} must be one of {', '.join(choices)}; found {value!r}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network, for how many classes, at what input size.

    ``class_names`` (e.g. WordNet synsets) and ``label_texts`` are indexed by
    label and may be empty; export uses them for human-readable outputs.
    """

    name: str
    num_classes: int
    image_size: int
    class_names: Tuple[str, ...] = ()
    label_texts: Tuple[str, ...] = ()

    def __post_init__(self):
        _require_choice("model", self.name, models.MODEL_NAMES)
        _require(self.num_classes >= 2, f"num_classes must be at least 2; found {self.num_classes}")
        smallest = models.min_image_size(self.name)
        _require(
            self.image_size >= smallest,
            f"image_size {self.image_size} is too small for {self.name}; use at least {smallest}",
        )
        for field in ("class_names", "label_texts"):
            names = getattr(self, field)
            _require(
                not names or len(names) == self.num_classes,
                f"{field} has {len(names)} entries but num_classes is {self.num_classes}",
            )


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Momentum SGD, its regularisers and its learning-rate schedule (see module doc)."""

    base_lr: float = 0.1
    lr_scaling: str = "linear"
    warmup_steps: int = 0
    decay: str = "cosine"
    decay_boundaries: Tuple[float, ...] = (30 / 90, 60 / 90, 80 / 90)
    decay_factor: float = 0.1
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False

    def __post_init__(self):
        _require(self.base_lr > 0, f"base_lr must be positive; found {self.base_lr}")
        _require_choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        _require_choice("lr_decay", self.decay, LR_DECAYS)
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0; found {self.warmup_steps}")
        _require(
            all(0 < b < 1 for b in self.decay_boundaries)
            and list(self.decay_boundaries) == sorted(self.decay_boundaries),
            f"decay_boundaries must be increasing fractions in (0, 1); found {self.decay_boundaries}",
        )
        _require(0 < self.decay_factor <= 1, f"decay_factor must be in (0, 1]; found {self.decay_factor}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0; found {self.weight_decay}")
        _require(
            0 <= self.label_smoothing < 1,
            f"label_smoothing must be in [0, 1); found {self.label_smoothing}",
        )
        _require(0 <= self.momentum < 1, f"momentum must be in [0, 1); found {self.momentum}")

    def peak_lr(self, update_batch_size, workers_per_update):
        """The LR reached after warmup when one update averages ``update_batch_size``
        images from ``workers_per_update`` workers (1 for asynchronous ps training)."""
        if self.lr_scaling == "linear":
            return self.base_lr * update_batch_size / _LINEAR_SCALING_REFERENCE_BATCH
        if self.lr_scaling == "sqrt":
            return self.base_lr * math.sqrt(workers_per_update)
        return self.base_lr


def optimizer_for_model(model_name, train_steps, **overrides):
    """The model's reference recipe (see the module docstring), with ``overrides`` applied.

    An override of None keeps the recipe's value; ``warmup_steps`` defaults to
    the recipe's ``warmup_fraction`` of ``train_steps``.
    """
    fields = models.recipe(model_name)
    fraction = fields.pop("warmup_fraction", 0.0)
    fields["warmup_steps"] = int(round(fraction * train_steps))
    fields.update({name: value for name, value in overrides.items() if value is not None})
    return OptimizerConfig(**fields)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything ``model_fn`` needs; passed as the Estimator's ``params``.

    ``batch_size`` is per worker; ``num_workers`` counts the tasks that train
    (chief plus workers). ``checkpoint_policy`` is a ``bwtf.ckpt.CheckpointPolicy``
    (None: the ckpt defaults); ``checkpoint_device`` is where the gathered
    saver's ops run, e.g. "/job:chief/task:0/device:CPU:0" (None: here).
    """

    model: ModelConfig
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = 32
    num_workers: int = 1
    train_steps: int = 1000
    precision: str = "fp32"
    xla: bool = False
    distribution: str = "none"
    sync_replicas: bool = False
    model_dir: Optional[str] = None
    checkpoint_policy: Any = None
    checkpoint_device: Optional[str] = None
    log_every_steps: int = 100

    def __post_init__(self):
        _require(self.batch_size >= 1, f"batch_size must be at least 1; found {self.batch_size}")
        _require(self.num_workers >= 1, f"num_workers must be at least 1; found {self.num_workers}")
        _require(self.train_steps >= 1, f"train_steps must be at least 1; found {self.train_steps}")
        _require_choice("precision", self.precision, PRECISIONS)
        _require_choice("distribution", self.distribution, DISTRIBUTIONS)
        _require(
            not self.sync_replicas or self.distribution == "ps",
            f"sync_replicas only applies to distribution=ps; found distribution={self.distribution}",
        )
        _require(self.log_every_steps >= 1, f"log_every_steps must be at least 1; found {self.log_every_steps}")

    @property
    def global_batch_size(self):
        return self.batch_size * self.num_workers

    @property
    def asynchronous(self):
        """True when each worker applies its own gradients (ps without sync_replicas)."""
        return self.distribution == "ps" and not self.sync_replicas

    @property
    def update_batch_size(self):
        """Images in one update of the variables (one global step): the LR and throughput unit."""
        return self.batch_size if self.asynchronous else self.global_batch_size

    @property
    def peak_lr(self):
        return self.optimizer.peak_lr(self.update_batch_size, 1 if self.asynchronous else self.num_workers)


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """Which TFDS dataset to read and how to preprocess it.

    ``num_classes`` None means "read it from the dataset's label feature".
    With ``use_synthetic_data`` the dataset is never opened and
    ``num_classes`` must be given. ``min_crop_area`` is the smallest
    fraction of the image a training crop keeps (0.08 for ImageNet; small,
    centred objects such as digits train faster with 0.5). ``eval_crop`` is
    the model's evaluation crop (``bwtf.estimator.models.eval_crop``).
    """

    name: str = "imagenet_archive"
    data_dir: Optional[str] = None
    image_size: int = 224
    num_classes: Optional[int] = None
    use_synthetic_data: bool = False
    use_bbox_crop: bool = False
    train_split: str = "train"
    eval_split: str = "validation"
    shuffle_buffer: int = 10000
    seed: Optional[int] = None
    min_crop_area: float = 0.08
    eval_crop: str = "resize_shorter_side"

    def __post_init__(self):
        _require_choice("eval_crop", self.eval_crop, EVAL_CROPS)
        _require(self.image_size >= 8, f"image_size must be at least 8; found {self.image_size}")
        _require(
            not self.use_synthetic_data or self.num_classes,
            "use_synthetic_data needs num_classes (there is no dataset to read it from)",
        )
        _require(
            0 < self.min_crop_area <= 1,
            f"min_crop_area must be in (0, 1]; found {self.min_crop_area}",
        )
        _require(self.shuffle_buffer >= 1, f"shuffle_buffer must be at least 1; found {self.shuffle_buffer}")
