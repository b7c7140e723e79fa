"""A SavedModel that serves JPEG bytes, from one checkpoint (what ``bwtf-export`` writes).

    export_saved_model(export_dir, checkpoint_prefix, model_config,
                       global_step=None, overwrite=False) -> str   # <export_dir>/<version>

writes ``<export_dir>/<version>/`` (the layout TF Serving and Estimator exports
use; the version is the checkpoint's global step, so a newer checkpoint gets a
higher version and a model server picks it up) as a TF1 SavedModel (tag ``serve``) with one signature,
``serving_default``: input ``jpeg_bytes`` (string [N], encoded JPEGs), outputs
``classes``, ``probabilities``, ``top_5_classes``, ``top_5_probabilities``,
``top_5_synsets``, ``top_5_labels``, ``valid`` and ``error`` (see
``serving.signature``). Bytes that are not a decodable JPEG give that row
``valid=False`` and an ``error`` text; the request itself succeeds.
``assets.extra/bwtf_export.json`` records the model, class count, image size,
checkpoint, step and the eval crop; ``assets/labels.txt`` (a SavedModel asset)
holds one ``<synset>\t<words>`` line per class, in label order. Each image is
cropped as the model's evaluation crops it (``inputs.eval_image_from_bytes``
with the model's ``eval_crop``) and the model runs in float32.

Devices are cleared (``clear_devices=True``), so the export loads on one CPU
whatever cluster trained the model, and it needs only TensorFlow: no bwtf code
runs at serving time. It is written to a temporary directory next to the
version folder and renamed into place, so a version folder never holds half
an export; an existing version is refused unless ``overwrite``.

Deliberately left out: the command line (``bwtf.estimator.export``), TF2
``tf.function`` signatures, batching and model servers' config, and
object-store export directories (the final rename must be atomic, which object
stores do not offer).
"""
import json
import os
import shutil
import time
import uuid

import tensorflow as tf
from absl import logging

import bwtf
from bwtf import ckpt
from bwtf.estimator import config, inputs, model_fn, models
from bwtf.estimator.serving import signature as serving_signature

METADATA_FILE = os.path.join("assets.extra", "bwtf_export.json")
LABELS_ASSET = "labels.txt"
SIGNATURE_KEY = "serving_default"


class ExportError(bwtf.UserError, ValueError):
    """The export cannot be written as asked; the message says what to change."""


def version_dir(export_dir, global_step):
    """``<export_dir>/<version>``: the checkpoint's step, or the time for a stepless checkpoint."""
    version = global_step if global_step is not None and global_step > 0 else int(time.time())
    return os.path.join(os.path.abspath(export_dir), str(version))


def refuse_existing(export_dir, overwrite):
    """Refuses an export into a version folder that exists (unless ``overwrite``) or a base
    folder that is itself a SavedModel (the layout before version folders)."""
    base = os.path.dirname(export_dir)
    if os.path.exists(os.path.join(base, "saved_model.pb")):
        raise ExportError(
            f"export_dir {base} is itself a SavedModel (written before exports had version "
            "folders); choose a new --export_dir (nothing was written)")
    if os.path.lexists(export_dir) and not overwrite:
        raise ExportError(
            f"export version {export_dir} already exists; pass --overwrite to replace it, or choose "
            "another --export_dir (nothing was written)")
    if os.path.lexists(export_dir) and not os.path.isdir(export_dir):
        raise ExportError(f"export_dir {export_dir} exists and is not a directory; remove it first")


def _labels_text(model_config):
    texts = model_config.label_texts or model_config.class_names
    return "".join(f"{name}\t{text}\n" for name, text in zip(model_config.class_names, texts))


def _build_and_save(staging_dir, checkpoint_prefix, model_config):
    """Restores the checkpoint into the serving graph and saves it to ``staging_dir``."""
    size = model_config.image_size
    # The model's own evaluation crop: serving sees what evaluation measured.
    crop = models.eval_crop(model_config.name)
    # The asset keeps its file name: write it under that name outside the SavedModel.
    os.makedirs(f"{staging_dir}-assets")
    labels_source = os.path.join(f"{staging_dir}-assets", LABELS_ASSET)
    with open(labels_source, "w", encoding="utf-8") as stream:
        stream.write(_labels_text(model_config))
    with tf.Graph().as_default():
        labels_path = tf.constant(labels_source, name="labels_file")
        tf.compat.v1.add_to_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS, labels_path)
        jpegs = tf.compat.v1.placeholder(tf.string, [None], name=serving_signature.INPUT_KEY)
        outputs = serving_signature.serving_outputs(
            jpegs,
            logits_fn=lambda images: model_fn.build_logits(images, model_config, training=False),
            preprocess_jpeg=lambda encoded: inputs.eval_image_from_bytes(encoded, size, crop),
            image_size=size, class_names=model_config.class_names,
            label_texts=model_config.label_texts)
        # bwtf.ckpt's restore: verified, and a checkpoint that broke or vanished
        # since it was chosen falls back to the newest intact one (named below).
        saver = ckpt.GatheredSaver(os.path.dirname(os.path.dirname(checkpoint_prefix)) or ".",
                                   ckpt.CheckpointPolicy(),
                                   var_list=tf.compat.v1.global_variables(), snapshots=False, quiet_restores=True)
        saver.build()
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={serving_signature.INPUT_KEY: jpegs}, outputs=outputs)
        with tf.compat.v1.Session() as session:
            saver.restore(session, checkpoint_prefix)
            builder = tf.compat.v1.saved_model.Builder(staging_dir)
            builder.add_meta_graph_and_variables(
                session, [tf.saved_model.SERVING], signature_def_map={SIGNATURE_KEY: signature},
                clear_devices=True, strip_default_attrs=True,
                assets_collection=tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.ASSET_FILEPATHS))
            builder.save()
    return saver.last_restored


def _write_metadata(staging_dir, checkpoint_prefix, model_config, global_step):
    path = os.path.join(staging_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        json.dump({"model": model_config.name, "num_classes": model_config.num_classes,
                   "image_size": model_config.image_size, "checkpoint": checkpoint_prefix,
                   "global_step": global_step, "signature": SIGNATURE_KEY,
                   "eval_crop": models.eval_crop(model_config.name),
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
    """Writes the SavedModel of ``checkpoint_prefix``; returns ``<export_dir>/<version>``.

    Raises ExportError for an existing version without ``overwrite`` and
    model_fn.CheckpointMismatchError for a checkpoint of another model.
    """
    export_dir = version_dir(export_dir, global_step)
    refuse_existing(export_dir, overwrite)
    model_fn.check_checkpoint_compatible(
        checkpoint_prefix, config.TrainConfig(model=model_config))
    parent, name = os.path.split(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging_dir = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    try:
        restored, restored_step = _build_and_save(staging_dir, checkpoint_prefix, model_config)
        if restored != checkpoint_prefix:
            logging.warning("checkpoint %s broke or vanished; exporting %s (step %s) instead",
                            checkpoint_prefix, restored, restored_step)
            checkpoint_prefix, global_step = restored, restored_step
        _write_metadata(staging_dir, checkpoint_prefix, model_config, global_step)
        refuse_existing(export_dir, overwrite)  # another export may have finished meanwhile
        _move_into_place(staging_dir, export_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
        shutil.rmtree(f"{staging_dir}-assets", ignore_errors=True)
    logging.info("exported %s (step %s) to %s", checkpoint_prefix, global_step, export_dir)
    return export_dir
