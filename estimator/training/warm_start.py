"""Fine-tuning from another run's checkpoint: ``bwtf-train --warm_start_from=M_OR_CKPT``.

    plan = plan_warm_start(source, train_config)   # WarmStart, or WarmStartError
    plan.settings() -> WarmStartSettings (tf.estimator's, or bwtf's without it)
    plan.describe() -> dict                        # what the new run's record keeps

``source`` is a model_dir (its newest intact checkpoint), a ``ckpt-<N>``
directory or a checkpoint prefix inside one, read through the verified reader
(``evaluation.checkpoints.resolve``: the manifest and every file's checksum).
Every model variable whose name and shape match the source is restored; the
optimizer state and the global step are not, so the new run starts at step 0
with fresh momentum and its own ``--train_steps`` count from there. The
classifier head is re-initialized when the class count differs, or when the
class list is the source's in another order.

A source whose run record names another model, or that lacks any of the
model's variables by name (another model family), is refused; so is a class
list with classes the source was never trained on (naming them). A class list
that is the source's in another order, or a subset of it, is accepted with one
line saying the head is re-initialized. A new run that already has its own
checkpoint resumes from that one, not from the source.

Deliberately left out: partial restores by pattern, and restoring the
optimizer state (a new run's learning-rate schedule starts over anyway).
"""
import dataclasses
import os
import re
from typing import Tuple

import tensorflow as tf
from absl import logging

from bwtf import ckpt
from bwtf.ckpt import run_record as _record_file
from bwtf.estimator import config, model_fn
from bwtf.estimator.evaluation import checkpoints as _checkpoints
from bwtf.estimator.evaluation import run_record as _record
from bwtf.estimator.runner import spec


class WarmStartError(config.ConfigError):
    """--warm_start_from cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """What to restore from which verified checkpoint."""

    source: str
    prefix: str
    step: int
    manifest_digest: str
    restored: Tuple[str, ...]
    reinitialized: Tuple[str, ...]

    def settings(self):
        patterns = [re.escape(name) + r":\d+$" for name in self.restored]
        return spec.WarmStartSettings(ckpt_to_initialize_from=self.prefix, vars_to_warm_start=patterns)

    def describe(self):
        return {"path": self.prefix, "source": self.source, "step": self.step,
                "manifest_digest": self.manifest_digest, "restored": len(self.restored),
                "reinitialized": list(self.reinitialized)}


def _resolve_source(source):
    """(step, prefix, model_dir or None) of the source's verified checkpoint."""
    if not tf.io.gfile.exists(source) and not tf.io.gfile.exists(source + ".index"):
        raise WarmStartError(f"--warm_start_from {source} does not exist; expected a model_dir, a "
                             "ckpt-<N> directory or a checkpoint prefix of another run")
    name = os.path.basename(source.rstrip("/"))
    if tf.io.gfile.isdir(source) and not name.startswith("ckpt-"):
        latest = ckpt.latest_intact_checkpoint(source)
        if latest is None:
            raise WarmStartError(
                f"--warm_start_from {source} holds no intact checkpoint (no ckpt-<N> directory with a "
                "verifying MANIFEST.json); point it at a bwtf-train model_dir or one of its ckpt-<N>")
        step, prefix = latest.step, latest.path
    else:
        try:
            step, prefix = _checkpoints.resolve(os.path.dirname(source.rstrip("/")), source)
        except (_checkpoints.NoCheckpointError, ckpt.CheckpointError) as error:
            raise WarmStartError(f"--warm_start_from {source} holds no intact checkpoint: {error}") from None
    directory = os.path.dirname(prefix)
    model_dir = os.path.dirname(directory) if os.path.basename(directory).startswith("ckpt-") else None
    return step, prefix, directory, model_dir


def _check_record(source_dir, train_config):
    """Refuses another model or unknown classes; True when the head must be re-initialized."""
    record = _record_file.read_record(source_dir) if source_dir else None
    if record is None:
        return False
    recorded_model = record.data.get("model", {}).get("name")
    if recorded_model != train_config.model.name:
        raise WarmStartError(
            f"--warm_start_from {source_dir} holds a {recorded_model} model (run record "
            f"{record.path}), not --model={train_config.model.name}; warm-start from a run of the "
            "same model")
    names = _record.class_names(record.data)
    current = train_config.model.class_names
    if not names or not current or tuple(names) == tuple(current):
        return False
    try:
        _record.require_known_classes(names, current, "this run's dataset")
    except _record.RecordMismatchError as error:
        raise WarmStartError(f"--warm_start_from {source_dir}: {error}") from None
    logging.info("class list: %d of the source's %d classes%s; the classifier head is re-initialized",
                 len(current), len(names), "" if len(current) < len(names) else " in another order")
    return True


def _head_variables(train_config, expected):
    """The variables whose shape follows the class count: the classifier head."""
    model = dataclasses.replace(train_config.model, num_classes=train_config.model.num_classes + 1,
                                class_names=(), label_texts=())
    other = model_fn.model_variable_shapes(dataclasses.replace(train_config, model=model))
    return {name for name, shape in expected.items() if other.get(name) != shape}


def plan_warm_start(source, train_config):
    """The WarmStart of ``source`` for the model ``train_config`` describes."""
    step, prefix, directory, source_dir = _resolve_source(source)
    head_differs = _check_record(source_dir, train_config)
    stored = dict(tf.train.list_variables(prefix))
    expected = model_fn.model_variable_shapes(train_config)
    absent = sorted(set(expected) - set(stored))
    if absent:
        raise WarmStartError(
            f"--warm_start_from {source} comes from a different model family: its checkpoint lacks "
            f"{len(absent)} of the {len(expected)} variables of --model={train_config.model.name} (e.g. "
            f"{absent[0]}); warm-start from a run of the same model")
    # A reordered class list keeps the head's shape but not its meaning.
    head = _head_variables(train_config, expected) if head_differs else set()
    restored, reinitialized = [], []
    for name, shape in sorted(expected.items()):
        matches = tuple(stored[name]) == tuple(shape) and name not in head
        (restored if matches else reinitialized).append(name)
    logging.info("warm start from %s (step %d): restoring %d of %d variables (%s); re-initialized: %s",
                 prefix, step, len(restored), len(expected), ", ".join(restored),
                 ", ".join(reinitialized) or "none")
    return WarmStart(source, prefix, step, _record_file.manifest_digest(directory),
                     tuple(restored), tuple(reinitialized))
