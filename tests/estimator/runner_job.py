"""A small model_fn run by bwtf's runner, as a program: the runner tests start it under any TensorFlow.

    python runner_job.py local MODEL_DIR STEPS EXPORT_DIR   # train, evaluate, export; prints JSON lines
    python runner_job.py TASK_TYPE INDEX MODEL_DIR STEPS CLUSTER_JSON   # one task of a ps cluster

The model is built from ``tf.compat.v1.get_variable`` and ``tf.nn`` only (no
Keras, no ``tf.compat.v1.layers``), so it builds on TensorFlow 2.15 and 2.21
alike: a two-layer classifier of 8 features into 4 classes on a fixed,
learnable synthetic dataset. It uses bwtf.ckpt's gathered scaffold and chief
hooks and the v1 metrics, exactly as bwtf's own model_fn does, so every part
of the EstimatorSpec contract the runner carries is exercised.

A ps task runs bwtf's ps lifecycle (exits 0 once the chief is done); the chief
notifies the ps tasks when it ends. Each result is one JSON line on stdout:
{"event": "trained"|"evaluated"|"exported", ...}.
"""
import json
import sys

import numpy as np
import tensorflow as tf

from bwtf import ckpt
from bwtf.estimator.cluster import ps_lifecycle
from bwtf.estimator.cluster import roles
from bwtf.estimator.runner import engine
from bwtf.estimator.runner import spec

FEATURES, CLASSES, EXAMPLES = 8, 4, 512


def _data():
    rng = np.random.RandomState(0)
    points = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
    labels = np.argmax(points @ rng.normal(size=(FEATURES, CLASSES)), axis=1).astype(np.int64)
    return points, labels


def input_fn(mode):
    points, labels = _data()
    dataset = tf.data.Dataset.from_tensor_slices((points, labels))
    if mode == spec.ModeKeys.TRAIN:
        return dataset.shuffle(EXAMPLES, seed=1).repeat().batch(32)
    return dataset.batch(64)


def _logits(features):
    with tf.compat.v1.variable_scope("model"):
        w1 = tf.compat.v1.get_variable("dense/kernel", [FEATURES, 16])
        b1 = tf.compat.v1.get_variable("dense/bias", [16], initializer=tf.compat.v1.zeros_initializer())
        w2 = tf.compat.v1.get_variable("logits/kernel", [16, CLASSES])
        b2 = tf.compat.v1.get_variable("logits/bias", [CLASSES], initializer=tf.compat.v1.zeros_initializer())
        return tf.nn.bias_add(tf.matmul(tf.nn.relu(tf.nn.bias_add(tf.matmul(features, w1), b1)), w2), b2)


def model_fn(features, labels, mode, params, config):
    policy = ckpt.CheckpointPolicy(save_steps=params["save_steps"])
    device = "/job:chief/task:0/device:CPU:0" if config.is_distributed and config.is_chief else None
    scaffold = ckpt.gathered_scaffold(config.model_dir, policy, device=device,
                                      quiet_restores=mode != spec.ModeKeys.TRAIN)
    # A serving receiver's single tensor arrives as {"feature": tensor}, as under tf.estimator.
    logits = _logits(features["feature"] if isinstance(features, dict) else features)
    classes = tf.argmax(logits, axis=1)
    if mode == spec.ModeKeys.PREDICT:
        predictions = {"classes": classes, "probabilities": tf.nn.softmax(logits)}
        return spec.EstimatorSpec(mode, predictions=predictions, scaffold=scaffold,
                                  export_outputs={"serving_default": spec.PredictOutput(predictions)})
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    if mode == spec.ModeKeys.EVAL:
        return spec.EstimatorSpec(mode, loss=loss, scaffold=scaffold,
                                  eval_metric_ops={"accuracy": tf.compat.v1.metrics.accuracy(labels, classes)})
    train_op = tf.compat.v1.train.GradientDescentOptimizer(0.5).minimize(
        loss, global_step=tf.compat.v1.train.get_or_create_global_step())
    chief_hooks = ckpt.chief_hooks(config.model_dir, scaffold, policy) if config.is_chief else []
    return spec.EstimatorSpec(mode, loss=loss, train_op=train_op, scaffold=scaffold,
                              training_chief_hooks=chief_hooks)


def _serving_input():
    points = tf.compat.v1.placeholder(tf.float32, [None, FEATURES], name="points")
    return spec.ServingInputReceiver(points, {"points": points})


def _emit(event, **values):
    print(json.dumps({"event": event, "tensorflow": tf.__version__, **values}), flush=True)


def _local(model_dir, steps, export_dir):
    runner = engine.Runner(model_fn, engine.RunConfig(model_dir=model_dir, log_step_count_steps=10),
                           params={"save_steps": 10})
    ckpt.take_ownership(model_dir)
    runner.train(input_fn, max_steps=steps)
    _emit("trained", step=ckpt.latest_intact_checkpoint(model_dir).step, stop=ckpt.stop_requested())
    results = runner.evaluate(input_fn, name="validation")
    _emit("evaluated", **{key: float(value) for key, value in results.items()})
    path = runner.export_saved_model(export_dir, _serving_input)
    points, labels = _data()
    loaded = tf.saved_model.load(path)
    classes = loaded.signatures["serving_default"](points=tf.constant(points[:64]))["classes"].numpy()
    _emit("exported", path=path, accuracy=float(np.mean(classes == labels[:64])))


def _task(task_type, index, model_dir, steps, cluster_spec):
    role = roles.ClusterRole(task_type, index, cluster_spec, "flags")
    if task_type == "ps":
        return ps_lifecycle.serve_parameter_server(role)
    config = engine.RunConfig(model_dir=model_dir, task_type=task_type, task_id=index, cluster_spec=cluster_spec,
                              log_step_count_steps=10)
    if role.is_chief:
        ckpt.take_ownership(model_dir)
    status = 1
    try:
        engine.train_distributed(engine.Runner(model_fn, config, params={"save_steps": 10}), input_fn, steps)
        status = 0
    finally:
        if role.is_chief:
            ps_lifecycle.notify_chief_done(role, status)
    _emit("trained", task=f"{task_type}:{index}",
          step=ckpt.latest_intact_checkpoint(model_dir).step if role.is_chief else None)
    return 0


def main(argv):
    if argv[0] == "local":
        _local(argv[1], int(argv[2]), argv[3])
        return 0
    return _task(argv[0], int(argv[1]), argv[2], int(argv[3]), json.loads(argv[4]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
