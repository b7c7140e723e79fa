"""Evaluating checkpoints on a split: once, or every new one as it appears.

    job = EvalJob(model_dir, dataset_config, train_config, batch_size)
    evaluate_once(job, checkpoint="latest") -> dict
    evaluate_continuously(job, final_step=None, idle_timeout_secs=3600, poll_secs=10)
        -> LoopOutcome(reason, evaluated)   # reason: 'final' or 'idle_timeout'

A result record holds ``precision_at_1``, ``precision_at_5``, ``loss``,
``global_step``, ``checkpoint``, ``num_examples`` (counted while evaluating: the
whole split, exactly once) and ``split``.

Continuous (``bwtf-eval --continuous`` and the ``evaluator`` task of a
training job): every new intact checkpoint is evaluated once; when several are
waiting the newest is taken and the skipped steps are logged; the loop stops by
itself after the checkpoint at ``final_step``, or after ``idle_timeout_secs``
without a new checkpoint (see ``loop``). Results are appended to
``<model_dir>/eval_<split>/history.jsonl``, which a restarted evaluator reads
to skip what is done.

Whatever cluster wrote the checkpoint, this runs in one CPU process: see
``single_process``. The configs must describe the trained model (same model,
same dataset so the same class count); a checkpoint of another model or class
count is refused with a message naming the first variable that differs.

Deliberately left out: the command line (``bwtf.estimator.evaluate``),
evaluating on several processes at once, and object-store model_dirs for the
history file (it is appended to in place).
"""
import dataclasses
import json
import time
from typing import Optional

import tensorflow as tf
from absl import logging

import bwtf
from bwtf import ckpt
from bwtf.estimator import inputs, model_fn
from bwtf.estimator import config as config_lib
from bwtf.estimator.evaluation import checkpoints as _eval_checkpoints
from bwtf.estimator.evaluation import history as _eval_history
from bwtf.estimator.evaluation import loop as _eval_loop
from bwtf.estimator.evaluation import single_process as _eval_estimator
from bwtf.estimator.runner import spec


# How often a waiting evaluator looks for the final checkpoint (a directory listing).
FINAL_WATCH_SECS = 1.0


class EvalError(bwtf.UserError, ValueError):
    """The evaluation cannot run as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class EvalJob:
    """What to evaluate: ``dataset.eval_split`` is the split."""

    model_dir: str
    dataset: config_lib.DatasetConfig
    train_config: config_lib.TrainConfig
    batch_size: int = 64
    steps: Optional[int] = None  # batches per evaluation; None = the whole split
    label_map: Optional[tuple] = None  # dataset label -> model label (a reordered or subset class list)

    @property
    def split(self):
        return self.dataset.eval_split


def _with_label_map(input_fn, label_map):
    """``input_fn`` whose labels are looked up in ``label_map`` (unchanged when None)."""
    if label_map is None:
        return input_fn

    def remapped_input_fn(*args, **kwargs):
        table = tf.constant(label_map, tf.int64)
        return input_fn(*args, **kwargs).map(
            lambda features, labels: (
                features, tf.cast(tf.gather(table, tf.cast(labels, tf.int64)), labels.dtype)))

    return remapped_input_fn


class _Evaluator:
    """The Estimator and input_fn of a job, built once and reused per checkpoint."""

    def __init__(self, job):
        self._job = job
        self._estimator = _eval_estimator.single_process_estimator(job.model_dir, job.train_config)
        self._input_fn = _with_label_map(
            inputs.make_input_fn(job.dataset, spec.ModeKeys.EVAL, job.batch_size), job.label_map)

    def __call__(self, step, prefix):
        """The record of one checkpoint; None when it vanished (pruned) meanwhile.

        The record's ``global_step`` and ``checkpoint`` are what was restored:
        if ``prefix`` broke or vanished during the restore, bwtf.ckpt restored
        the newest intact checkpoint instead, and the record says so.
        """
        try:
            model_fn.check_checkpoint_compatible(prefix, self._job.train_config)
            logging.info("evaluating checkpoint %s (step %d) on split %r", prefix, step, self._job.split,
                         extra=bwtf.FILE_ONLY)
            record = _eval_estimator.evaluate_checkpoint(
                self._estimator, self._input_fn, prefix, self._job.split, self._job.steps)
        except (tf.errors.NotFoundError, ckpt.CorruptCheckpointError):
            if tf.io.gfile.exists(prefix + ".index"):
                raise
            logging.warning("checkpoint %s was removed while being evaluated (retention "
                            "keeps only the newest); moving on", prefix)
            return None
        if record["global_step"] != step:
            restored = _eval_checkpoints.prefix_of(
                f"{prefix.rsplit('/', 2)[0]}/ckpt-{record['global_step']}", record["global_step"])
            logging.warning("checkpoint %s (step %d) vanished or broke while being restored; the "
                            "metrics are of %s (step %d)", prefix, step, restored,
                            record["global_step"])
            record["checkpoint"] = restored
        return record


def _check_count(job, record, split_sizes):
    expected = split_sizes.get(job.split)
    if expected is not None and job.steps is None and record["num_examples"] != expected:
        logging.warning(
            "evaluated %d examples but the dataset info says split %r has %d; the metrics "
            "cover the examples actually read", record["num_examples"], job.split, expected)


def _dataset_sizes(job):
    if job.dataset.use_synthetic_data:
        return {}
    return inputs.dataset_metadata(job.dataset, splits=[job.split]).split_sizes


def evaluate_once(job, checkpoint="latest"):
    """Evaluates one checkpoint over the whole split; returns the result record."""
    sizes = _dataset_sizes(job)
    step, prefix = _eval_checkpoints.resolve(job.model_dir, checkpoint)
    record = _Evaluator(job)(step, prefix)
    if record is None:
        raise EvalError(f"checkpoint {prefix} disappeared during the evaluation; run again")
    _check_count(job, record, sizes)
    return record


def evaluate_continuously(job, final_step=None, idle_timeout_secs=3600.0, poll_secs=10.0,
                          sleep=time.sleep):
    """Evaluates each new intact checkpoint once until a stop rule holds (see ``loop``).

    ``final_step`` is the trainer's --train_steps (None: stop only on the idle
    timeout); ``sleep`` waits between polls (tests pass their own).
    """
    sizes = _dataset_sizes(job)
    evaluator = _Evaluator(job)

    def evaluate_and_check(step, prefix):
        record = evaluator(step, prefix)
        if record is not None:
            _check_count(job, record, sizes)
            print(json.dumps(record, sort_keys=True), flush=True)
        return record

    loop_config = _eval_loop.LoopConfig(
        history_path=_eval_history.history_path(job.model_dir, job.split),
        final_step=final_step, idle_timeout_secs=idle_timeout_secs, poll_secs=poll_secs,
        final_watch_secs=FINAL_WATCH_SECS)
    return _eval_loop.run_loop(
        loop_config, lambda: _eval_checkpoints.intact_checkpoints(job.model_dir),
        evaluate_and_check, sleep=sleep)
