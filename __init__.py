"""bwtf: distributed tf.estimator training of image models on HPC clusters.

Sub-packages:
  bwtf.data       the TFDS builder ``imagenet_archive`` for local ImageNet archives
  bwtf.estimator  the training, evaluation, export and launch programs
  bwtf.ckpt       checkpoints gathered on the chief and committed atomically

Importing ``bwtf`` checks the installed TensorFlow before anything else: bwtf is
built on ``tf.estimator``, which TensorFlow removed in 2.16, and failing here with
a plain message beats an AttributeError deep inside a training job. The check
reads package metadata only, so ``import bwtf`` stays cheap.
"""
from bwtf import _tf_guard

_tf_guard.require_supported_tensorflow()

__version__ = "0.1.0"
