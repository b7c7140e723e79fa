"""A SavedModel that serves JPEG bytes, from one checkpoint (what ``bwtf-export`` writes).

    export_saved_model(export_dir, checkpoint_prefix, model_config,
                       global_step=None, overwrite=False) -> str

writes ``export_dir`` as a TF1 SavedModel (tag ``serve``) with one signature,
``serving_default``: input ``jpeg_bytes`` (string [N], encoded JPEGs), outputs
``classes``, ``probabilities``, ``top_5_classes``, ``top_5_probabilities``,
``top_5_synsets``, ``top_5_labels``, ``valid`` and ``error`` (see
``serving.signature``). Bytes that are not a decodable JPEG give that row
``valid=False`` and an ``error`` text; the request itself succeeds.
``assets.extra/bwtf_export.json`` records the model, class count, image size,
checkpoint and step.

Devices are cleared (``clear_devices=True``), so the export loads on one CPU
whatever cluster trained the model, and it needs only TensorFlow: no bwtf code
runs at serving time. It is written to a temporary directory next to
``export_dir`` and renamed into place, so ``export_dir`` never holds half an
export; an existing ``export_dir`` is refused unless ``overwrite``.

Deliberately left out: the command line (``bwtf.estimator.export``), TF2
``tf.function`` signatures, batching and model servers' config, and
object-store export directories (the final rename must be atomic, which object
stores do not offer).
"""
import json
import os
import shutil
import uuid

import tensorflow as tf
from absl import logging

import bwtf
from bwtf.estimator import config, inputs, model_fn
from bwtf.estimator.serving import signature as serving_signature

METADATA_FILE = os.path.join("assets.extra", "bwtf_export.json")
SIGNATURE_KEY = "serving_default"


class ExportError(bwtf.UserError, ValueError):
    """The export cannot be written as asked; the message says what to change."""


def refuse_existing(export_dir, overwrite):
    if os.path.lexists(export_dir) and not overwrite:
        raise ExportError(
            f"export_dir {export_dir} already exists; pass --overwrite to replace it, or choose "
            "another --export_dir (nothing was written)")
    if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"export_dir {export_dir} exists and is not a directory; remove it first")


def _build_and_save(staging_dir, checkpoint_prefix, model_config):
    """Restores the checkpoint into the serving graph and saves it to ``staging_dir``."""
    size = model_config.image_size
    with tf.Graph().as_default():
        jpegs = tf.compat.v1.placeholder(tf.string, [None], name=serving_signature.INPUT_KEY)
        outputs = serving_signature.serving_outputs(
            jpegs,
            logits_fn=lambda images: model_fn.build_logits(images, model_config, training=False),
            preprocess_jpeg=lambda encoded: inputs.eval_image_from_bytes(encoded, size),
            image_size=size, class_names=model_config.class_names,
            label_texts=model_config.label_texts)
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={serving_signature.INPUT_KEY: jpegs}, outputs=outputs)
        with tf.compat.v1.Session() as session:
            saver.restore(session, checkpoint_prefix)
            builder = tf.compat.v1.saved_model.Builder(staging_dir)
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.SERVING], signature_def_map={SIGNATURE_KEY: signature},
                clear_devices=True, strip_default_attrs=True)
            builder.save()


def _write_metadata(staging_dir, checkpoint_prefix, model_config, global_step):
    path = os.path.join(staging_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"model": model_config.name, "num_classes": model_config.num_classes,
                   "image_size": model_config.image_size, "checkpoint": checkpoint_prefix,
                   "global_step": global_step, "signature": SIGNATURE_KEY,
                   "input": serving_signature.INPUT_KEY}, stream, indent=2, sort_keys=True)


def _move_into_place(staging_dir, export_dir):
    """Renames staging_dir to export_dir; an old export is swapped out, then deleted.

    Each rename is atomic, so at every moment export_dir holds either the old
    export or the new one, never a mixture.
    """
    old = None
    if os.path.lexists(export_dir):
        old = f"{staging_dir}.old"
        os.rename(export_dir, old)
    os.rename(staging_dir, export_dir)
    if old:
        shutil.rmtree(old)


def export_saved_model(export_dir, checkpoint_prefix, model_config, global_step=None,
                       overwrite=False):
    """Writes the SavedModel of ``checkpoint_prefix``; returns ``export_dir``.

    Raises ExportError for an existing export_dir without ``overwrite`` and
    model_fn.CheckpointMismatchError for a checkpoint of another model.
    """
    export_dir = os.path.abspath(export_dir)
    refuse_existing(export_dir, overwrite)
    model_fn.check_checkpoint_compatible(
        checkpoint_prefix, config.TrainConfig(model=model_config))
    parent, name = os.path.split(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging_dir = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    try:
        _build_and_save(staging_dir, checkpoint_prefix, model_config)
        _write_metadata(staging_dir, checkpoint_prefix, model_config, global_step)
        refuse_existing(export_dir, overwrite)  # another export may have finished meanwhile
        _move_into_place(staging_dir, export_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    logging.info("exported %s (step %s) to %s", checkpoint_prefix, global_step, export_dir)
    return export_dir
