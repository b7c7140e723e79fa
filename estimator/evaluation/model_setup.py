"""Flag values (the groups of ``bwtf.estimator._flags``) into the configs eval and export use.

The model must be rebuilt exactly as it was trained, so the same model and
data flags are read the same way ``bwtf-train`` reads them: the class count
comes from the dataset (``--num_classes`` must agree with it), the image size
from ``--image_size`` or the model's native size.

``setup_for_model_dir`` prefers the model_dir's run record
(``bwtf.estimator.evaluation.run_record``): the model, image size, class list
and dataset come from there, explicit flags that contradict it are refused,
and ``--data_dir``/the split override the recorded ones. A model_dir from
before records falls back to the flags, read as above.

Deliberately left out: validating the checkpoint against the model
(``model_fn.check_checkpoint_compatible`` does that right before a restore).
"""
import dataclasses
from typing import Optional

from absl import flags, logging

from bwtf import ckpt
from bwtf.ckpt import run_record as _record_file
from bwtf.estimator import _flags, config, inputs, model_fn, models
from bwtf.estimator.evaluation import checkpoints as _eval_checkpoints
from bwtf.estimator.evaluation import run_record as _record
from bwtf.estimator.serving import labels as _export_labels

# bwtf-train's class count for synthetic data when --num_classes is 0.
SYNTHETIC_NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The configs a restored model needs, plus the dataset metadata used to build them."""

    dataset: config.DatasetConfig
    train: config.TrainConfig
    metadata: object  # inputs.DatasetMetadata, or None with synthetic data
    label_map: Optional[tuple] = None  # dataset label -> model label (see run_record.label_map)
    record: object = None  # the ckpt.run_record.RunRecord it was built from, if any


def model_setup(model_values, data_values, model_dir, split, batch_size=32, *, splits=None,
                split_flag="--split", with_label_texts=False):
    """Reads the dataset's metadata (checking ``splits``, default [split], exist) and builds the configs.

    ``split_flag`` names the flag a missing split's error points at.
    ``with_label_texts`` fills ``ModelConfig.label_texts`` from the dataset's
    ``label_text`` feature (see ``_export_labels.label_texts``: it reads the
    smallest split until every class is seen, so only the processes that
    name classes should ask). Raises inputs.DatasetError (no dataset, no such
    split) or config.ConfigError.
    """
    size = _flags.image_size(model_values)
    synthetic = data_values["use_synthetic_data"]
    requested_classes = model_values["num_classes"]
    dataset = dataclasses.replace(
        _flags.dataset_config(data_values, size,
                              (requested_classes or SYNTHETIC_NUM_CLASSES) if synthetic else None,
                              model_name=model_values["model"]),
        eval_split=split)
    metadata = None
    if synthetic:
        model = config.ModelConfig(model_values["model"], dataset.num_classes, size)
    else:
        metadata = inputs.dataset_metadata(dataset, splits=list(splits or [split]), split_flag=split_flag)
        if requested_classes and requested_classes != metadata.num_classes:
            raise config.ConfigError(
                f"--num_classes={requested_classes} but dataset {dataset.name!r} has "
                f"{metadata.num_classes} classes; drop --num_classes to use the dataset's")
        texts = ()
        if with_label_texts and metadata.class_names:
            texts = _export_labels.label_texts(dataset, metadata.class_names)
        model = config.ModelConfig(model_values["model"], metadata.num_classes, size,
                                   class_names=metadata.class_names, label_texts=texts)
    train = config.TrainConfig(model=model, batch_size=batch_size, model_dir=model_dir)
    return ModelSetup(dataset, train, metadata)


def setup_for_model_dir(model_values, data_values, explicit, model_dir, split=None, batch_size=32, *,
                        need_dataset=True, split_flag="--split"):
    """The trained model's setup from the model_dir's run record, else from the flags.

    ``explicit`` holds the flags given on the command line ({name: value});
    ``split`` None means the recorded eval split. ``need_dataset`` False (export)
    reads no dataset at all when there is a record. Raises RecordMismatchError,
    ckpt.run_record.RunRecordError, inputs.DatasetError.
    """
    record = _record_file.read_record(model_dir) if model_dir else None
    if record is None:
        if model_dir and "model" not in explicit:
            # resnet50 is --model's default; guessing it would only fail later on missing variables.
            raise _record.RecordMismatchError(
                f"model_dir {model_dir} has no run record ({_record_file.RECORD_FILE}): it was written "
                "before bwtf recorded its runs, or is not a bwtf-train model_dir. Give the flags it was "
                "trained with (--model, --image_size, --data_dir, --dataset)")
        if model_dir:
            logging.info("%s has no run record (written before bwtf recorded its runs); the model "
                         "and data flags describe the model", model_dir)
        return model_setup(model_values, data_values, model_dir, split or data_values["eval_split"],
                           batch_size, split_flag=split_flag)
    model = _record.recorded_model(record.data, record.path)
    _record.refuse_contradictions(record.data, record.path, explicit)
    recorded = record.data.get("dataset", {})
    synthetic = bool(explicit.get("use_synthetic_data", recorded.get("synthetic")))
    dataset = dataclasses.replace(
        _flags.dataset_config(dict(data_values, dataset=explicit.get("dataset") or recorded["name"],
                                   use_synthetic_data=synthetic,
                                   data_dir=data_values["data_dir"] or recorded.get("data_dir")),
                              model.image_size, model.num_classes if synthetic else None),
        train_split=recorded.get("train_split") or "train",
        eval_split=split or explicit.get("eval_split") or recorded.get("eval_split") or "validation")
    metadata, label_map = None, None
    if need_dataset and not synthetic:
        metadata = inputs.dataset_metadata(dataset, splits=[dataset.eval_split], split_flag=split_flag)
        label_map = _record.label_map(model.class_names, metadata.class_names, dataset.name)
        if label_map is None and metadata.num_classes != model.num_classes:
            raise _record.RecordMismatchError(
                f"dataset {dataset.name!r} in {dataset.data_dir} has {metadata.num_classes} classes but "
                f"the model was trained on {model.num_classes} (run record {record.path}); point "
                "--data_dir at the dataset it was trained on")
    train = config.TrainConfig(model=model, batch_size=batch_size, model_dir=model_dir)
    logging.info("model from the run record %s: %s at %dpx, %d classes, dataset %s split %s",
                 record.path, model.name, model.image_size, model.num_classes, dataset.name,
                 dataset.eval_split)
    return ModelSetup(dataset, train, metadata, label_map, record)


def define_checkpoint_flag(flag_values):
    """--checkpoint, as bwtf-eval and bwtf-export both take it."""
    return flags.DEFINE_string(
        "checkpoint", "latest", "'latest' (newest intact checkpoint of --model_dir), a "
        "ckpt-<N> directory, or a TF checkpoint prefix.", flag_values=flag_values)
