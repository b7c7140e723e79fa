"""`bwtf-export` (``python -m bwtf.estimator.export``): a SavedModel that serves JPEG bytes.

    bwtf-export --model_dir=runs/r50 --export_dir=exports/r50 \\
        --model=resnet50 --data_dir=~/tfds [--checkpoint=latest] [--overwrite]

writes ``export_dir`` as a TF1 SavedModel (tag ``serve``) with one signature,
``serving_default``: input ``jpeg_bytes`` (string [N], encoded JPEGs), outputs
``classes``, ``probabilities``, ``top_5_classes``, ``top_5_probabilities``,
``top_5_synsets``, ``top_5_labels``, ``valid`` and ``error`` (see
``_export_signature``). Bytes that are not a decodable JPEG give that row
``valid=False`` and an ``error`` text; the request itself succeeds.
``assets.extra/bwtf_export.json`` records the model, class count, image size,
checkpoint and step.

Devices are cleared (``clear_devices=True``), so the export loads on one CPU
whatever cluster trained the model, and it needs only TensorFlow: no bwtf code
runs at serving time. It is written to a temporary directory next to
``export_dir`` and renamed into place, so ``export_dir`` never holds half an
export; an existing ``export_dir`` is refused unless ``--overwrite``.

Library use: ``export_saved_model(export_dir, checkpoint_prefix, model_config,
global_step=None, overwrite=False) -> str``.

Deliberately left out: TF2 ``tf.function`` signatures, batching and model
servers' config, and object-store export directories (the final rename must be
atomic, which object stores do not offer).
"""
import dataclasses
import json
import os
import shutil
import sys
import uuid

import tensorflow as tf
from absl import app, flags, logging

import bwtf
from bwtf.estimator import _eval_checkpoints, _eval_setup, _export_labels, _export_signature
from bwtf.estimator import _flags, _tf_logging, config, inputs, model_fn

EXIT_USER_ERROR = 2
METADATA_FILE = os.path.join("assets.extra", "bwtf_export.json")
SIGNATURE_KEY = "serving_default"


class ExportError(ValueError):
    """The export cannot be written as asked; the message says what to change."""


def _refuse_existing(export_dir, overwrite):
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
        jpegs = tf.compat.v1.placeholder(tf.string, [None], name=_export_signature.INPUT_KEY)
        outputs = _export_signature.serving_outputs(
            jpegs,
            logits_fn=lambda images: model_fn.build_logits(images, model_config, training=False),
            preprocess_jpeg=lambda encoded: inputs.eval_image_from_bytes(encoded, size),
            image_size=size, class_names=model_config.class_names,
            label_texts=model_config.label_texts)
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
            inputs={_export_signature.INPUT_KEY: jpegs}, outputs=outputs)
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
                   "input": _export_signature.INPUT_KEY}, stream, indent=2, sort_keys=True)


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
    _refuse_existing(export_dir, overwrite)
    model_fn.check_checkpoint_compatible(
        checkpoint_prefix, config.TrainConfig(model=model_config))
    parent, name = os.path.split(export_dir)
    os.makedirs(parent, exist_ok=True)
    staging_dir = os.path.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:12]}")
    try:
        _build_and_save(staging_dir, checkpoint_prefix, model_config)
        _write_metadata(staging_dir, checkpoint_prefix, model_config, global_step)
        _refuse_existing(export_dir, overwrite)  # another export may have finished meanwhile
        _move_into_place(staging_dir, export_dir)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    logging.info("exported %s (step %s) to %s", checkpoint_prefix, global_step, export_dir)
    return export_dir


# ---------------------------------------------------------------------------
# The command line: bwtf-train's model and data flags rebuild the model. The
# flags are defined when the program starts (``run``), not at import, so the
# library function can be imported next to another program's flags.

def define_flags(flag_values=flags.FLAGS):
    """Defines bwtf-export's flags on ``flag_values``; returns {group: FlagGroup}."""
    own = _flags.FlagGroup({
        "model_dir": flags.DEFINE_string(
            "model_dir", None, "The training run to export from.", flag_values=flag_values),
        "export_dir": flags.DEFINE_string(
            "export_dir", None, "Where the SavedModel goes (a new directory).",
            flag_values=flag_values),
        "checkpoint": _eval_setup.define_checkpoint_flag(flag_values),
        "overwrite": flags.DEFINE_bool(
            "overwrite", False, "Replace an existing --export_dir.", flag_values=flag_values),
        "labels_file": flags.DEFINE_string(
            "labels_file", None, "Synset words file (LOC_synset_mapping.txt or words.txt) for "
            "the label text; default: the dataset's own label_text.", flag_values=flag_values),
    })
    return {"model": _flags.define_model_flags(flag_values),
            "data": _flags.define_data_flags(flag_values), "export": own}


def _user_errors():
    return (ExportError, _export_labels.LabelsFileError) + _eval_setup.user_errors()


def _export_from_values(values):
    own, data_values = values["export"], values["data"]
    if not own["model_dir"] and own["checkpoint"] in (None, "", "latest"):
        raise ExportError("--model_dir is required (or --checkpoint=PATH): the training run to export")
    if not own["export_dir"]:
        raise ExportError("--export_dir is required: where the SavedModel goes")
    # Refused before any work, so a mistaken command costs nothing.
    _refuse_existing(os.path.abspath(own["export_dir"]), own["overwrite"])
    setup = _eval_setup.model_setup(values["model"], data_values, own["model_dir"],
                                    data_values["eval_split"], split_flag="--eval_split")
    step, prefix = _eval_checkpoints.resolve(own["model_dir"], own["checkpoint"])
    model = setup.train.model
    names = model.class_names or tuple(str(label) for label in range(model.num_classes))
    texts = _export_labels.label_texts(
        None if setup.metadata is None else setup.dataset, names, own["labels_file"])
    model = dataclasses.replace(model, class_names=names, label_texts=texts)
    return export_saved_model(own["export_dir"], prefix, model, step, own["overwrite"])


def main(argv, cli_flags):
    """Runs bwtf-export with the parsed ``cli_flags`` (from ``define_flags``)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; every setting is a --flag")
    _tf_logging.route_tensorflow_logs_through_absl()
    values = {group: holders.values() for group, holders in cli_flags.items()}
    try:
        print(_export_from_values(values))
    except _user_errors() as error:
        print(f"bwtf-export: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run():
    cli_flags = define_flags()
    bwtf.show_program_flags_in_help()
    app.run(lambda argv: main(argv, cli_flags))


if __name__ == "__main__":
    run()
