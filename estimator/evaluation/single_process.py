"""One checkpoint through ``Estimator.evaluate`` (or bwtf's runner, when selected), on this process alone.

The Estimator is built with a RunConfig that ignores ``TF_CONFIG``: an
evaluator started inside a training job sees the job's cluster there, and a
RunConfig built from it would place variables on ``/job:ps`` devices this
process cannot reach. Checkpoints are plain TF V2 bundles whose variable names
do not depend on where they lived, so a single CPU process restores any of
them.

``num_examples`` is counted in the graph (a local counter summed over the
batches actually evaluated), not copied from the dataset's metadata, so the
result says how many examples the metrics really cover.

Deliberately left out: choosing the checkpoint (``runner``) and
distributing one evaluation over several processes.
"""
import contextlib
import dataclasses
import os

import tensorflow as tf

from bwtf.estimator import model_fn as model_fn_lib
from bwtf.estimator.runner import engine as _runner
from bwtf.estimator.runner import selection as _selection
from bwtf.estimator.runner import spec as spec_lib

NUM_EXAMPLES = "num_examples"
# Reported name: metric name. "loss" is the per-example mean cross-entropy
# (model_fn.CROSS_ENTROPY), not the Estimator's mean of per-batch losses.
REPORTED = {"precision_at_1": "precision_at_1", "precision_at_5": "precision_at_5",
            "loss": model_fn_lib.CROSS_ENTROPY}


@contextlib.contextmanager
def _without_tf_config():
    saved = os.environ.pop("TF_CONFIG", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["TF_CONFIG"] = saved


def _example_count(labels):
    count = tf.compat.v1.Variable(
        0, dtype=tf.int64, trainable=False, name="eval_num_examples",
        collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES,
                     tf.compat.v1.GraphKeys.METRIC_VARIABLES])
    update = count.assign_add(tf.cast(tf.size(labels), tf.int64))
    return tf.identity(count), update


def counting_model_fn(features, labels, mode, params, config=None):
    """``model_fn`` plus an exact ``num_examples`` metric in EVAL mode."""
    spec = model_fn_lib.model_fn(features, labels, mode, params, config)
    if mode != spec_lib.ModeKeys.EVAL:
        return spec
    metrics = dict(spec.eval_metric_ops)
    metrics[NUM_EXAMPLES] = _example_count(labels)
    return spec._replace(eval_metric_ops=metrics)


def single_process_estimator(model_dir, train_config):
    """An Estimator for ``train_config``'s model that runs in this process only."""
    # The chief's checkpoint device names a task this process is not part of.
    train_config = dataclasses.replace(train_config, checkpoint_device=None)
    if _selection.use_bwtf_runner():
        return _runner.Runner(counting_model_fn, _runner.RunConfig(model_dir=model_dir, log_step_count_steps=None),
                              params=train_config)
    with _without_tf_config():
        run_config = tf.estimator.RunConfig(
            model_dir=model_dir, save_checkpoints_steps=None, save_checkpoints_secs=None,
            log_step_count_steps=None)
    return tf.estimator.Estimator(counting_model_fn, config=run_config, params=train_config)


def evaluate_checkpoint(estimator, input_fn, checkpoint_path, split, steps=None):
    """The metrics of one checkpoint over the whole ``split``, as plain Python values.

    Writes the eval event files to ``<model_dir>/eval_<split>/`` (TensorBoard's
    view of the evaluation).
    """
    results = estimator.evaluate(
        input_fn, steps=steps, checkpoint_path=checkpoint_path, name=split)
    record = {name: float(results[metric]) for name, metric in REPORTED.items()}
    record["global_step"] = int(results[tf.compat.v1.GraphKeys.GLOBAL_STEP])
    record[NUM_EXAMPLES] = int(results[NUM_EXAMPLES])
    record["checkpoint"] = checkpoint_path
    record["split"] = split
    return record
