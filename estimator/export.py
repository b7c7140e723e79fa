"""Exports a checkpoint as a SavedModel that serves JPEG bytes.

    bwtf-export --model_dir=runs/r50 --export_dir=exports/r50 [--checkpoint=latest] [--overwrite]

writes ``<export_dir>/<version>/`` (the version is the checkpoint's global step;
the path is printed) as a TF1 SavedModel (tag ``serve``) whose one signature,
``serving_default``, takes encoded JPEGs (``jpeg_bytes``) and answers classes,
probabilities and the top-5 synsets and labels; see
``bwtf.estimator.serving.saved_model`` for the outputs and the atomicity
argument. An existing version is refused unless ``--overwrite``.

The model and the label text come from the run record ``<model_dir>/run.json``,
so no dataset is read; a model flag that contradicts the record is refused
naming both values. A model_dir written before records needs the training
flags (``--model``, ``--image_size``, ``--data_dir``, ``--dataset``), as before.

Exit codes:
  0   done (the export's path is printed)
  2   bad flags, dataset, checkpoint or export_dir (one line; nothing was written)
"""
import dataclasses
import functools

from absl import flags

import bwtf
from bwtf import program
from bwtf.estimator import _flags
from bwtf.estimator.evaluation import checkpoints as _eval_checkpoints
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.serving import labels as _export_labels
from bwtf.estimator.serving.saved_model import ExportError, export_saved_model, refuse_existing, version_dir
from bwtf.estimator.serving.saved_model import METADATA_FILE  # noqa: F401  (where the export records itself)

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
            "export_dir", None, "Where the SavedModel goes: a version folder <export_dir>/<step>/.",
            flag_values=flag_values),
        "checkpoint": _eval_setup.define_checkpoint_flag(flag_values),
        "overwrite": flags.DEFINE_bool(
            "overwrite", False, "Replace an existing version folder of the same step.", flag_values=flag_values),
        "labels_file": flags.DEFINE_string(
            "labels_file", None, "Synset words file (LOC_synset_mapping.txt or words.txt) for "
            "the label text; default: the run record's class words (else the dataset's "
            "label_text).", flag_values=flag_values),
    })
    return {"export": own, "model": _flags.define_model_flags(flag_values),
            "data": _flags.define_data_flags(flag_values, only=_DATA_FLAGS)}


def _export_from_values(values):
    own, data_values = values["export"], values["data"]
    if not own["model_dir"] and own["checkpoint"] in (None, "", "latest"):
        raise ExportError("--model_dir is required (or --checkpoint=PATH): the training run to export")
    if not own["export_dir"]:
        raise ExportError("--export_dir is required: where the SavedModel goes")
    # --checkpoint=.../ckpt-<N> alone still finds its run's record.
    model_dir = own["model_dir"] or _eval_checkpoints.model_dir_of(own["checkpoint"])
    setup = _eval_setup.setup_for_model_dir(values["model"], data_values, values["explicit"],
                                            model_dir, need_dataset=False, split_flag="--eval_split")
    step, prefix = _eval_checkpoints.resolve(own["model_dir"], own["checkpoint"])
    # Refused before any work, so a mistaken command costs nothing.
    refuse_existing(version_dir(own["export_dir"], step), own["overwrite"])
    model = setup.train.model
    names = model.class_names or tuple(str(label) for label in range(model.num_classes))
    if setup.record is not None and not own["labels_file"]:
        texts = model.label_texts or names
    else:
        texts = _export_labels.label_texts(
            None if setup.metadata is None else setup.dataset, names, own["labels_file"])
    model = dataclasses.replace(model, class_names=names, label_texts=texts)
    return export_saved_model(own["export_dir"], prefix, model, step, own["overwrite"])


def _export(values, cli_flags):
    values["explicit"] = {name: value for holders in cli_flags.values()
                          for name, value in holders.explicit().items()}
    program.log_to_file_in(values["export"]["model_dir"], "export")
    print(_export_from_values(values))
    return 0


def _program(cli_flags):
    return program.Program(
        name="bwtf-export", doc=__doc__, usage="bwtf-export [flags]",
        flag_groups=(("Export", cli_flags["export"]), ("Model", cli_flags["model"]), ("Data", cli_flags["data"])))


def main(argv, cli_flags):
    """Runs bwtf-export with the parsed ``cli_flags`` (from ``define_flags``); exits with its code."""
    program.run_with_groups(functools.partial(_export, cli_flags=cli_flags), _program(cli_flags), cli_flags, argv)


def run():
    cli_flags = define_flags()
    program.run_with_groups(functools.partial(_export, cli_flags=cli_flags), _program(cli_flags), cli_flags)


if __name__ == "__main__":
    run()
