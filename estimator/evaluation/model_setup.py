"""Flag values (the groups of ``bwtf.estimator._flags``) into the configs eval and export use.

The model must be rebuilt exactly as it was trained, so the same model and
data flags are read the same way ``bwtf-train`` reads them: the class count
comes from the dataset (``--num_classes`` must agree with it), the image size
from ``--image_size`` or the model's native size.

Deliberately left out: validating the checkpoint against the model
(``model_fn.check_checkpoint_compatible`` does that right before a restore).
"""
import dataclasses

from absl import flags

from bwtf.estimator import _flags, config, inputs
from bwtf.estimator.serving import labels as _export_labels

# bwtf-train's class count for synthetic data when --num_classes is 0.
SYNTHETIC_NUM_CLASSES = 1000


@dataclasses.dataclass(frozen=True)
class ModelSetup:
    """The configs a restored model needs, plus the dataset metadata used to build them."""

    dataset: config.DatasetConfig
    train: config.TrainConfig
    metadata: object  # inputs.DatasetMetadata, or None with synthetic data


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
                              (requested_classes or SYNTHETIC_NUM_CLASSES) if synthetic else None),
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


def define_checkpoint_flag(flag_values):
    """--checkpoint, as bwtf-eval and bwtf-export both take it."""
    return flags.DEFINE_string(
        "checkpoint", "latest", "'latest' (newest intact checkpoint of --model_dir), a "
        "ckpt-<N> directory, or a TF checkpoint prefix.", flag_values=flag_values)
