"""One task of the small localhost cluster used by the bwtf.ckpt tests.

  python ckpt_task.py ps      (TF_CONFIG names the task)   serves variables forever
  python ckpt_task.py chief --model_dir=D --saver=bwtf|default --max_steps=N ...
  python ckpt_task.py local --model_dir=D ...              a single process

The chief trains a tiny Estimator whose variables live on the ps tasks: a
partitioned embedding (one part per ps), a dense kernel with Adagrad slots and
the global step. It is a user's own ``tf.estimator.Estimator`` program where
TensorFlow has one (2.15); on 2.21 the same model_fn runs through bwtf's
runner, which has no stock checkpoint saver (``--saver=default`` exits 3). It writes a JSON result (final step, stop reason) and exits
with ckpt.EXIT_REQUEUE when the stop hook stopped it, as bwtf's train.py does.
This is a test program, not the real training program.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import tensorflow as tf

from bwtf import ckpt
from bwtf.estimator.runner import engine
from bwtf.estimator.runner import spec

_DIM = 8
_SERVERS = []


def _parse():
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["ps", "chief", "local"])
    parser.add_argument("--model_dir")
    parser.add_argument("--saver", default="bwtf", choices=["bwtf", "default"])
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--save_steps", type=int, default=10)
    parser.add_argument("--sleep_per_step", type=float, default=0.0)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--result")
    parser.add_argument("--progress")
    parser.add_argument("--warm_start_from")
    parser.add_argument("--evaluate", action="store_true")
    return parser.parse_args()


def _model_fn(args, num_partitions):
    def model_fn(features, labels, mode):
        emb = tf.compat.v1.get_variable(
            "emb", [args.rows, _DIM],
            partitioner=tf.compat.v1.fixed_size_partitioner(num_partitions))
        kernel = tf.compat.v1.get_variable("kernel", [_DIM, 1])
        hidden = tf.nn.embedding_lookup(emb, features["ids"])
        logits = tf.matmul(hidden, kernel)
        loss = tf.reduce_mean(tf.square(logits - labels))
        step = tf.compat.v1.train.get_or_create_global_step()
        if mode == spec.ModeKeys.EVAL:
            policy = ckpt.CheckpointPolicy()
            return spec.EstimatorSpec(
                mode, loss=loss, scaffold=ckpt.gathered_scaffold(args.model_dir, policy))
        train_op = tf.compat.v1.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
        if args.sleep_per_step:
            with tf.control_dependencies([train_op]):
                train_op = tf.group(tf.py_function(
                    lambda: time.sleep(args.sleep_per_step) or 0, [], tf.int32))
        if args.saver == "default":
            return spec.EstimatorSpec(mode, loss=loss, train_op=train_op)
        policy = ckpt.CheckpointPolicy(save_steps=args.save_steps, keep_last=3,
                                       max_group_bytes=1024)
        device = "/job:chief/task:0/device:CPU:0" if num_partitions > 1 or _has_ps() else None
        scaffold = ckpt.gathered_scaffold(args.model_dir, policy, device=device)
        return spec.EstimatorSpec(
            mode, loss=loss, train_op=train_op, scaffold=scaffold,
            training_chief_hooks=ckpt.chief_hooks(args.model_dir, scaffold, policy))
    return model_fn


class _ProgressHook(tf.compat.v1.train.SessionRunHook):
    """Records the step training started from and the last step it finished,
    so a test can count the steps a stop-and-restart lost."""

    def __init__(self, path):
        self._path = path
        self._progress = {}

    def begin(self):
        self._step = tf.compat.v1.train.get_global_step()

    def after_create_session(self, session, coord):
        self._progress["start_step"] = int(session.run(self._step))
        emb = [v for v in tf.compat.v1.trainable_variables() if v.name.startswith("emb/")]
        self._progress["emb_sum"] = float(sum(np.sum(x) for x in session.run(emb)))

    def after_run(self, run_context, run_values):
        self._progress["last_trained_step"] = int(run_context.session.run(self._step))
        # Replaced atomically: the test polls this file while training runs.
        with open(self._path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(self._progress, f)
        os.replace(self._path + ".tmp", self._path)


def _has_ps():
    return bool(json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {}).get("ps"))


def _input_fn(args):
    rng = np.random.RandomState(0)
    ids = rng.randint(0, args.rows, size=(256, 1)).astype(np.int64)
    labels = rng.normal(size=(256, 1)).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices(({"ids": ids}, labels)).repeat().batch(16)


def _train(args):
    tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    num_ps = len(tf_config.get("cluster", {}).get("ps", []))
    if args.role == "chief":
        server = tf.distribute.Server(tf.train.ClusterSpec(tf_config["cluster"]),
                                      job_name="chief", task_index=0, start=True)
        _SERVERS.append(server)  # the server stops when garbage-collected
    else:
        os.environ.pop("TF_CONFIG", None)
    model_fn = _model_fn(args, max(num_ps, 1))
    hooks = [_ProgressHook(args.progress)] if args.progress else []
    if spec.HAS_TF_ESTIMATOR:
        config = tf.estimator.RunConfig(
            model_dir=args.model_dir,
            save_checkpoints_steps=args.save_steps if args.saver == "default" else None,
            save_checkpoints_secs=None, keep_checkpoint_max=3,
            session_config=tf.compat.v1.ConfigProto(device_filters=["/job:ps", "/job:chief"]))
        estimator = tf.estimator.Estimator(model_fn, config=config, warm_start_from=args.warm_start_from)
        estimator.train(lambda: _input_fn(args), max_steps=args.max_steps, hooks=hooks)
    else:
        if args.saver == "default":
            print("TensorFlow's own saver needs tf.estimator (2.15)", file=sys.stderr)
            return 3
        estimator = _runner(args, model_fn, tf_config.get("cluster", {}) if args.role == "chief" else {})
        master = _SERVERS[0].target if _SERVERS else ""
        estimator.train(lambda: _input_fn(args), args.max_steps, hooks=hooks, master=master)
    reason = ckpt.stop_requested() if args.saver == "bwtf" else None
    result = {"step": int(_stored(args.model_dir, "global_step")), "stop_reason": reason}
    if args.evaluate:
        metrics = estimator.evaluate(lambda: _input_fn(args).take(2))
        result["eval_step"] = int(metrics["global_step"])
        result["emb_sum"] = float(np.sum(_stored(args.model_dir, "emb")))
    if args.result:
        with open(args.result, "w", encoding="utf-8") as f:
            json.dump(result, f)
    return ckpt.EXIT_REQUEUE if reason else 0


def _runner(args, model_fn, cluster_spec):
    """bwtf's runner in place of tf.estimator: the chief of the ps cluster, or a single process."""
    config = engine.RunConfig(model_dir=args.model_dir, task_type="chief" if cluster_spec else "worker",
                              cluster_spec=cluster_spec)
    warm_start = spec.WarmStartSettings(args.warm_start_from) if args.warm_start_from else None
    return engine.Runner(model_fn, config, warm_start_from=warm_start)


def _stored(model_dir, name):
    """A variable's value in the newest checkpoint (partitions joined), as Estimator.get_variable_value reads it."""
    return tf.train.load_variable(tf.train.latest_checkpoint(model_dir), name)


def main():
    args = _parse()
    if args.role == "ps":
        tf_config = json.loads(os.environ["TF_CONFIG"])
        server = tf.distribute.Server(tf.train.ClusterSpec(tf_config["cluster"]),
                                      job_name="ps", task_index=tf_config["task"]["index"])
        server.join()
        return 0
    return _train(args)


if __name__ == "__main__":
    sys.exit(main())
