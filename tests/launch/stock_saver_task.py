"""One task of a ps + chief cluster that saves the same variables twice (a test program).

    srun --ntasks=2 python stock_saver_task.py MODEL_DIR

The role comes from the Slurm variables (bwtf.estimator.cluster). The chief
places ``weights`` (10 floats) and the global step on the ps, adds 1 to every
weight in each of 7 steps, then saves with TF's stock sharded ``Saver`` into
MODEL_DIR/stock (SaveV2 and MergeV2Checkpoints run on the ps, which writes to
its own view of MODEL_DIR) and with bwtf's ``GatheredSaver`` into
MODEL_DIR/gathered (everything read to the chief and written there). The ps
serves until the chief says it is done. Prints one line per saver.
"""
import os
import sys

from bwtf import ckpt
from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle
from bwtf.estimator.cluster import roles as cluster

_STEPS = 7


def _chief(role, model_dir):
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    server = tf.distribute.Server(tf.train.ClusterSpec(role.cluster_spec), job_name="chief",
                                  task_index=0, start=True)
    with tf.device("/job:ps/task:0"):
        weights = tf.compat.v1.get_variable("weights", initializer=tf.zeros([10]))
        step = tf.compat.v1.train.get_or_create_global_step()
    train = tf.group(weights.assign_add(tf.ones([10])), step.assign_add(1))
    stock = tf.compat.v1.train.Saver(sharded=True)
    gathered = ckpt.GatheredSaver(os.path.join(model_dir, "gathered"), ckpt.CheckpointPolicy(),
                                  device="/job:chief/task:0/device:CPU:0")
    gathered.build()
    try:
        with tf.compat.v1.Session(server.target) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for _ in range(_STEPS):
                session.run(train)
            total = float(session.run(weights).sum())
            os.makedirs(os.path.join(model_dir, "stock"), exist_ok=True)
            stock.save(session, os.path.join(model_dir, "stock", "model.ckpt"), global_step=_STEPS)
            print(f"stock: {_STEPS} steps, weights sum {total}", flush=True)
            gathered.save(session, None, global_step=_STEPS)
            print(f"gathered: {_STEPS} steps, weights sum {total}", flush=True)
    finally:
        _ps_lifecycle.notify_chief_done(role, 0)
    return 0


def main(argv):
    model_dir = argv[1]
    role = cluster.resolve(num_ps=1)
    if role.task_type == "ps":
        return _ps_lifecycle.serve_parameter_server(role)
    return _chief(role, model_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
