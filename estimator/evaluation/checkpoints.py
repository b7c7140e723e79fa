"""Which checkpoint(s) the evaluator reads: bwtf's committed ``ckpt-<N>`` directories.

``--checkpoint`` accepts ``latest`` (the newest intact checkpoint of
model_dir), a ``ckpt-<N>`` directory or the prefix inside one
(``.../ckpt-<N>/model.ckpt-<N>``), both verified against the manifest by
bwtf.ckpt's one verified reader, or any other TF checkpoint prefix (used as it
is: a stock TF checkpoint has no manifest to verify).

Deliberately left out: verifying stock TF checkpoints, and object stores for
the prefix form (``tf.io.gfile`` would read them, but they cannot be verified).
"""
import os

import tensorflow as tf

import bwtf
from bwtf import ckpt


class NoCheckpointError(bwtf.UserError, FileNotFoundError):
    """There is no usable checkpoint where one was expected."""


def prefix_of(directory, step):
    """The TF prefix inside a committed ``ckpt-<N>`` directory (ckpt's on-disk layout)."""
    return f"{directory.rstrip('/')}/model.ckpt-{step}"


def intact_checkpoints(model_dir):
    """[(step, prefix)] of every intact checkpoint of model_dir, oldest first."""
    if not tf.io.gfile.isdir(model_dir):
        return []
    return [(status.step, prefix_of(status.directory, status.step))
            for status in ckpt.list_checkpoints(model_dir) if status.intact]


def _step_of_prefix(prefix):
    reader = tf.train.load_checkpoint(prefix)
    if reader.has_tensor(tf.compat.v1.GraphKeys.GLOBAL_STEP):
        return int(reader.get_tensor(tf.compat.v1.GraphKeys.GLOBAL_STEP))
    return -1


def _inside_bwtf_checkpoint(path):
    text = path.rstrip("/")
    for name in (os.path.basename(text), os.path.basename(os.path.dirname(text))):
        if name.startswith("ckpt-") and name[5:].isdigit():
            return True
    return False


def model_dir_of(checkpoint):
    """The model_dir holding a ``ckpt-<N>`` directory or a prefix inside one; None otherwise."""
    if checkpoint in (None, "", "latest"):
        return None
    path = checkpoint.rstrip("/")
    directory = path if step_of_name(os.path.basename(path)) is not None else os.path.dirname(path)
    if step_of_name(os.path.basename(directory)) is None:
        return None
    return os.path.dirname(directory)


def step_of_name(name):
    return int(name[5:]) if name.startswith("ckpt-") and name[5:].isdigit() else None


def resolve(model_dir, checkpoint="latest"):
    """(step, prefix) of the checkpoint to evaluate; raises NoCheckpointError.

    bwtf checkpoints (``latest``, a ``ckpt-<N>`` directory or a prefix inside
    one) go through bwtf.ckpt's verified reader: a broken one is refused with
    its own path and reason, never answered with another checkpoint's step.
    """
    if checkpoint in (None, "", "latest"):
        ref = ckpt.latest_intact_checkpoint(model_dir)
        if ref is None:
            raise NoCheckpointError(
                f"model_dir {model_dir} holds no intact checkpoint (expected ckpt-<N>/ "
                "directories with a MANIFEST.json, as bwtf-train writes them). Train first, "
                "point --model_dir at a training run, or pass --checkpoint=PATH.")
        return ref.step, ref.path
    if _inside_bwtf_checkpoint(checkpoint) and (
            tf.io.gfile.isdir(checkpoint) or tf.io.gfile.isdir(os.path.dirname(checkpoint.rstrip("/")))):
        try:
            ref = ckpt.resolve_checkpoint(checkpoint)
        except ckpt.CheckpointError as error:
            raise NoCheckpointError(f"--checkpoint {checkpoint} is not intact: {error}") from None
        return ref.step, ref.path
    if tf.io.gfile.exists(checkpoint + ".index"):
        return _step_of_prefix(checkpoint), checkpoint
    raise NoCheckpointError(
        f"--checkpoint {checkpoint} is neither 'latest', a ckpt-<N> directory nor a TF "
        f"checkpoint prefix (no {checkpoint}.index). Run 'bwtf-ckpt list {model_dir}' to "
        "see the checkpoints there.")
