"""Exports a checkpoint as a SavedModel that serves JPEG bytes.

    bwtf-export --model_dir=runs/r50 --export_dir=exports/r50 \
        --model=resnet50 --data_dir=~/tfds [--checkpoint=latest] [--overwrite]

writes --export_dir as a TF1 SavedModel (tag serve) whose one signature,
serving_default, takes encoded JPEGs (input jpeg_bytes, string [N]) and answers
classes, probabilities, top_5_classes, top_5_probabilities, top_5_synsets,
top_5_labels, valid and error; bytes that are not a decodable JPEG give their
row valid=False and an error text, and the request still succeeds.
assets.extra/bwtf_export.json records the model, class count, image size,
checkpoint and step. Devices are cleared, so the export loads on one CPU
whatever cluster trained the model, and serving needs only TensorFlow. It is
written beside --export_dir and renamed into place, so --export_dir never
holds half an export; an existing one is refused unless --overwrite.

The model and data flags must describe the trained model, as for bwtf-eval.

Exit codes:
  0   done (the export's path is printed)
  2   bad flags, dataset, checkpoint or export_dir (one line; nothing was written)
"""
import dataclasses
import os

from absl import flags

import bwtf
from bwtf import program
from bwtf.estimator import _flags
from bwtf.estimator.evaluation import checkpoints as _eval_checkpoints
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.serving import labels as _export_labels
from bwtf.estimator.serving.saved_model import ExportError, export_saved_model, refuse_existing
from bwtf.estimator.serving.saved_model import METADATA_FILE  # noqa: F401  (where the export records itself)

EXIT_USER_ERROR = bwtf.EXIT_USAGE
_DATA_FLAGS = ("data_dir", "dataset", "use_synthetic_data", "eval_split")


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
    return {"export": own, "model": _flags.define_model_flags(flag_values),
            "data": _flags.define_data_flags(flag_values, only=_DATA_FLAGS)}


def _export_from_values(values):
    own, data_values = values["export"], values["data"]
    if not own["model_dir"] and own["checkpoint"] in (None, "", "latest"):
        raise ExportError("--model_dir is required (or --checkpoint=PATH): the training run to export")
    if not own["export_dir"]:
        raise ExportError("--export_dir is required: where the SavedModel goes")
    # Refused before any work, so a mistaken command costs nothing.
    refuse_existing(os.path.abspath(own["export_dir"]), own["overwrite"])
    setup = _eval_setup.model_setup(values["model"], data_values, own["model_dir"],
                                    data_values["eval_split"], split_flag="--eval_split")
    step, prefix = _eval_checkpoints.resolve(own["model_dir"], own["checkpoint"])
    model = setup.train.model
    names = model.class_names or tuple(str(label) for label in range(model.num_classes))
    texts = _export_labels.label_texts(
        None if setup.metadata is None else setup.dataset, names, own["labels_file"])
    model = dataclasses.replace(model, class_names=names, label_texts=texts)
    return export_saved_model(own["export_dir"], prefix, model, step, own["overwrite"])


def _export(values):
    program.log_to_file_in(values["export"]["model_dir"], "export")
    print(_export_from_values(values))
    return 0


def _program(cli_flags):
    return program.Program(
        name="bwtf-export", doc=__doc__, usage="bwtf-export [flags]",
        flag_groups=(("Export", cli_flags["export"]), ("Model", cli_flags["model"]), ("Data", cli_flags["data"])))


def main(argv, cli_flags):
    """Runs bwtf-export with the parsed ``cli_flags`` (from ``define_flags``); exits with its code."""
    program.run_with_groups(_export, _program(cli_flags), cli_flags, argv)


def run():
    cli_flags = define_flags()
    program.run_with_groups(_export, _program(cli_flags), cli_flags)


if __name__ == "__main__":
    run()
