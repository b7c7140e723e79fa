"""What a run record says, and how train, eval and export use it.

    build_record(train_config, dataset_config, flag_values, role, warm_start=None) -> dict
    check_restart(record, train_config)            # a restarted chief; RecordMismatchError
    refuse_contradictions(record, explicit)         # eval/export flags given on the command line
    recorded_model(record) -> config.ModelConfig    # the model as it was trained
    label_map(recorded_names, dataset_names, dataset) -> tuple | None   # remap or refuse

The record (``<model_dir>/run.json``, the file itself is ``bwtf.ckpt.run_record``)
holds the bwtf and TensorFlow versions; the model and what shapes its graph
(``GRAPH_SETTINGS``: name, image size, class count, precision); the dataset's
name, config, version, data_dir and splits; the class list (synsets and their
words, in label order); every training flag; the cluster's shape; and the
source of a warm start. A restarted chief refuses a record whose graph settings
or class list differ from its own, naming both values, instead of finding out
from missing variables.

Flags given explicitly to bwtf-eval/bwtf-export that contradict the record's
model are refused the same way; those meant to change between runs (the split,
the batch size and steps of an evaluation) are not compared, and another
``--data_dir``/``--dataset`` is checked by its class list instead
(``label_map``).

Deliberately left out: the file's format and integrity (``bwtf.ckpt.run_record``)
and restoring variables (``bwtf.estimator.training.warm_start``).
"""
import importlib.metadata
import os

from absl import logging

from bwtf.estimator import config, models

# Record field of ModelConfig/TrainConfig -> the flag that sets it.
GRAPH_SETTINGS = (("name", "--model"), ("image_size", "--image_size"),
                  ("num_classes", "--num_classes"), ("precision", "--precision"))


class RecordMismatchError(config.ConfigError):
    """Flags (or a dataset) that contradict the run record; the message names both values."""


def _version(distribution):
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _dataset_version(dataset_config):
    if dataset_config.use_synthetic_data:
        return None
    import tensorflow_datasets as tfds

    try:
        return str(tfds.builder(dataset_config.name, data_dir=dataset_config.data_dir).info.version)
    except Exception as error:  # noqa: BLE001  The version is informative; never fail a run on it.
        logging.warning("could not read the version of dataset %s: %s", dataset_config.name, error)
        return None


def _absolute(path):
    return path if not path or "://" in path else os.path.abspath(path)


def model_settings(train_config):
    model = train_config.model
    return {"name": model.name, "image_size": model.image_size, "num_classes": model.num_classes,
            "precision": train_config.precision}


def build_record(train_config, dataset_config, flag_values, role, warm_start=None):
    """The record of a training run (a JSON-ready dict)."""
    model = train_config.model
    texts = model.label_texts or ("",) * len(model.class_names)
    name, _, dataset_config_name = dataset_config.name.partition("/")
    return {
        "created_by": f"bwtf {_version('bwtf')}", "bwtf": _version("bwtf"),
        "tensorflow": _version("tensorflow") if _version("tensorflow") != "unknown"
        else _version("tensorflow-cpu"),
        "model_dir": _absolute(train_config.model_dir),
        "model": model_settings(train_config),
        "dataset": {"name": dataset_config.name, "builder": name, "config": dataset_config_name or None,
                    "version": _dataset_version(dataset_config), "data_dir": _absolute(dataset_config.data_dir),
                    "train_split": dataset_config.train_split, "eval_split": dataset_config.eval_split,
                    "synthetic": dataset_config.use_synthetic_data},
        "classes": [{"name": n, "text": t} for n, t in zip(model.class_names, texts)],
        "flags": flag_values,
        "cluster": {"source": role.source, "num_workers": role.num_workers, "num_ps": role.num_ps,
                    "distribution": train_config.distribution, "sync_replicas": train_config.sync_replicas},
        "warm_start": warm_start,
    }


def class_names(record):
    return tuple(c.get("name", "") for c in record.get("classes", []))


def _describe_difference(recorded, found):
    missing = [n for n in recorded if n not in set(found)]
    extra = [n for n in found if n not in set(recorded)]
    parts = []
    if extra:
        parts.append(f"{len(extra)} class(es) not in the record (e.g. {', '.join(extra[:3])})")
    if missing:
        parts.append(f"lacks {len(missing)} recorded class(es) (e.g. {', '.join(missing[:3])})")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(recorded, found)) if a != b)
        parts.append(f"the same classes in another order (label {first} is {found[first]}, "
                     f"recorded {recorded[first]})")
    return "; ".join(parts)


def check_restart(record, record_path, train_config):
    """Raises RecordMismatchError when this chief would build another graph than the record's."""
    recorded = record.get("model", {})
    for (field, flag), value in zip(GRAPH_SETTINGS, model_settings(train_config).values()):
        if recorded.get(field) != value:
            raise RecordMismatchError(
                f"{flag}={value} but this model_dir was trained with {flag}={recorded.get(field)} "
                f"(run record {record_path}); use {flag}={recorded.get(field)} to resume it, or a "
                "fresh --model_dir")
    names = class_names(record)
    current = train_config.model.class_names
    if names and current and tuple(names) != tuple(current):
        raise RecordMismatchError(
            f"the dataset's class list differs from the one this model_dir was trained with (run "
            f"record {record_path}): it has {_describe_difference(names, current)}; resume with the "
            "recorded dataset, or use a fresh --model_dir")


# Explicit flag -> (record section, field): the flags that shape the model's graph.
_COMPARED_FLAGS = {
    "model": ("model", "name"), "image_size": ("model", "image_size"),
    "num_classes": ("model", "num_classes"), "precision": ("model", "precision"),
}


def refuse_contradictions(record, record_path, explicit):
    """Raises RecordMismatchError for an explicit flag (``{name: value}``) the record contradicts."""
    for flag, value in sorted(explicit.items()):
        if flag not in _COMPARED_FLAGS:
            continue
        section, field = _COMPARED_FLAGS[flag]
        recorded = record.get(section, {}).get(field)
        if flag == "image_size" and value == 0:
            value = models.default_image_size(explicit.get("model") or record["model"]["name"])
        if flag == "num_classes" and value == 0:
            continue
        if recorded is not None and value != recorded:
            raise RecordMismatchError(
                f"--{flag}={value} contradicts the run record {record_path}, which says the model "
                f"was trained with --{flag}={recorded}; drop --{flag} (the record describes the "
                "model), or point --model_dir at the run you mean")


def _require_fields(record, record_path):
    """Raises RecordMismatchError unless the record has what recorded_model and the jobs read."""
    model, dataset, classes = record.get("model"), record.get("dataset"), record.get("classes", [])
    problems = []
    if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not all(
            isinstance(model.get(key), int) for key in ("image_size", "num_classes")):
        problems.append("a 'model' with name, image_size and num_classes")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("name"), str):
        problems.append("a 'dataset' with its name")
    if not isinstance(classes, list) or not all(isinstance(c, dict) for c in classes):
        problems.append("'classes' as a list of {name, text}")
    if problems:
        raise RecordMismatchError(
            f"run record {record_path} lacks {' and '.join(problems)} (edited by hand?); restore it, or "
            "delete it and give the model flags explicitly")


def recorded_model(record, record_path="run.json"):
    """The ModelConfig the record describes, with its class names and words."""
    _require_fields(record, record_path)
    model = record["model"]
    classes = record.get("classes", [])
    names = tuple(c.get("name", "") for c in classes)
    texts = tuple(c.get("text") or c.get("name", "") for c in classes)
    return config.ModelConfig(model["name"], model["num_classes"], model["image_size"],
                              class_names=names, label_texts=texts)


def require_known_classes(recorded_names, class_names, what):
    """Raises RecordMismatchError, naming the difference, unless every class is a recorded one."""
    known = set(recorded_names)
    if any(name not in known for name in class_names):
        raise RecordMismatchError(
            f"{what} has classes the model was not trained on: "
            f"{_describe_difference(tuple(recorded_names), tuple(class_names))}. Use a dataset with "
            f"the recorded class list ({len(recorded_names)} classes), another order of it or a subset")


def label_map(recorded_names, dataset_names, dataset_name):
    """Dataset label -> model label when the dataset's classes are the record's in another order
    or a subset (logged in one line); None when identical; RecordMismatchError otherwise."""
    recorded_names, dataset_names = tuple(recorded_names), tuple(dataset_names)
    if not recorded_names or not dataset_names or recorded_names == dataset_names:
        return None
    require_known_classes(recorded_names, dataset_names, f"dataset {dataset_name!r}")
    index = {name: label for label, name in enumerate(recorded_names)}
    logging.info("labels remapped: dataset %s has %d of the model's %d classes%s; its labels are "
                 "mapped onto the model's", dataset_name, len(dataset_names), len(recorded_names),
                 "" if len(dataset_names) < len(recorded_names) else " in another order")
    return tuple(index[name] for name in dataset_names)
