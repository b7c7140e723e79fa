"""A --sync_replicas training task whose checkpoints show a torn update, as a program.

    python sync_snapshot_job.py TASK_TYPE INDEX MODEL_DIR STEPS CLUSTER_JSON PRECISION
    python sync_snapshot_job.py replay STEPS PRECISION   # prints the value after each step

The model is ``_NUM_VARIABLES`` vectors spread over the ps tasks, and its loss
is minus their sum, so every element of every variable gets the same gradient
at every step: after the same number of updates every element of every
variable holds the same value, and the value grows with each step (a
constant learning rate, momentum). The train op, the optimizer wrappers
(SyncReplicasOptimizer, the update gate, the loss scaling, the step limit)
and every hook come from bwtf's own ``model_fn._train_spec``; bwtf's runner
runs it (tf.estimator is not needed, so it also runs on TensorFlow 2.21).
The chief saves every step, in the background, while the worker goes on
training. ``replay`` runs the same optimizer in one process and prints the
value after 0..STEPS updates (one JSON line): a checkpoint of step s must hold
that value for step s in every element.
"""
import json
import sys

import numpy as np
import tensorflow as tf

from bwtf import ckpt
from bwtf.estimator import config as config_lib
from bwtf.estimator import model_fn as bwtf_model_fn
from bwtf.estimator.cluster import ps_lifecycle
from bwtf.estimator.cluster import roles
from bwtf.estimator.runner import engine

_NUM_VARIABLES = 8
_SIZE = 16 * 1024
_CHIEF_CPU = "/job:chief/task:0/device:CPU:0"


def _train_config(steps, precision, model_dir=None, sync=True, checkpoint_device=None):
    return config_lib.TrainConfig(
        model=config_lib.ModelConfig("small_cnn", 2, 16),
        optimizer=config_lib.OptimizerConfig(base_lr=0.5, lr_scaling="none", decay="constant",
                                             weight_decay=0.0, label_smoothing=0.0),
        batch_size=1, num_workers=2, train_steps=steps, precision=precision,
        distribution="ps" if sync else "none", sync_replicas=sync, model_dir=model_dir,
        checkpoint_policy=ckpt.CheckpointPolicy(save_steps=1, keep_last=10_000),
        checkpoint_device=checkpoint_device, log_every_steps=1000)


def _loss():
    variables = [tf.compat.v1.get_variable(f"model/v{i}", [_SIZE], initializer=tf.compat.v1.zeros_initializer())
                 for i in range(_NUM_VARIABLES)]
    return -tf.add_n([tf.reduce_sum(v) for v in variables]) / _SIZE


def input_fn():
    return tf.data.Dataset.from_tensors((tf.zeros([1, 1]), tf.zeros([1], tf.int64))).repeat()


def model_fn(features, labels, mode, params, config):
    del features, mode
    train_config = params
    scaffold = ckpt.gathered_scaffold(config.model_dir, train_config.checkpoint_policy,
                                      device=train_config.checkpoint_device)
    logits = tf.zeros([1, 2])
    return bwtf_model_fn._train_spec(  # pylint: disable=protected-access
        train_config, logits, labels, _loss(), scaffold, config.model_dir, config.is_chief,
        bwtf_model_fn._stripe(config))  # pylint: disable=protected-access


def _task(task_type, index, model_dir, steps, cluster_spec, precision):
    role = roles.ClusterRole(task_type, index, cluster_spec, "flags")
    if task_type == "ps":
        return ps_lifecycle.serve_parameter_server(role)
    config = engine.RunConfig(model_dir=model_dir, task_type=task_type, task_id=index, cluster_spec=cluster_spec,
                              log_step_count_steps=1000)
    train_config = _train_config(steps, precision, model_dir, checkpoint_device=_CHIEF_CPU if role.is_chief else None)
    if role.is_chief:
        ckpt.take_ownership(model_dir)
    status = 1
    try:
        engine.train_distributed(engine.Runner(model_fn, config, params=train_config), input_fn, steps)
        status = 0
    finally:
        if role.is_chief:
            ps_lifecycle.notify_chief_done(role, status)
    print(json.dumps({"event": "trained", "task": f"{task_type}:{index}", "tensorflow": tf.__version__}), flush=True)
    return 0


def _replay(steps, precision):
    """The value of every element after 0..steps updates, by the same optimizer in one process."""
    train_config = _train_config(steps, precision, sync=False)
    with tf.Graph().as_default():
        loss = _loss()
        global_step = tf.compat.v1.train.get_or_create_global_step()
        lr = bwtf_model_fn.learning_rate(global_step, train_config)
        optimizer = bwtf_model_fn._optimizer(train_config, lr)  # pylint: disable=protected-access
        train_op = optimizer.minimize(loss, global_step=global_step)
        first = tf.compat.v1.trainable_variables()[0]
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            values = [float(sess.run(first)[0])]
            for _ in range(steps):
                sess.run(train_op)
                value = sess.run(first)
                assert np.all(value == value[0])
                values.append(float(value[0]))
    print(json.dumps({"event": "replay", "values": values}), flush=True)


def main(argv):
    tf.compat.v1.disable_eager_execution()
    if argv[0] == "replay":
        _replay(int(argv[1]), argv[2])
        return 0
    return _task(argv[0], int(argv[1]), argv[2], int(argv[3]), json.loads(argv[4]), argv[5])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
