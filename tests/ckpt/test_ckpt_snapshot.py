"""One-step snapshots on a real (in-process, gRPC on localhost) cluster of 2 ps.

Every variable counts the updates it received, and ``global_step`` too, all
bumped by one op as an asynchronous worker would. A checkpoint must hold one
moment: every counter equal to its stored global_step, which equals the step
in its name and in its manifest, however many updates land while the groups
are gathered and written in the background.
"""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt
from bwtf.ckpt import fence

from ckpt_cluster import free_port

_NUM_VARS = 12


@pytest.fixture(scope="module")
def servers():
    ports = [free_port() for _ in range(3)]
    cluster = tf.train.ClusterSpec({"chief": [f"localhost:{ports[0]}"],
                                    "ps": [f"localhost:{p}" for p in ports[1:]]})
    made = [tf.distribute.Server(cluster, job_name="chief", task_index=0),
            tf.distribute.Server(cluster, job_name="ps", task_index=0),
            tf.distribute.Server(cluster, job_name="ps", task_index=1)]
    yield made[0].target


def _graph():
    with tf.device("/job:ps/task:0"):
        step = tf.compat.v1.train.get_or_create_global_step()
    variables = []
    for i in range(_NUM_VARS):
        with tf.device(f"/job:ps/task:{i % 2}"):
            variables.append(tf.compat.v1.get_variable(
                f"v{i}", [2048], initializer=tf.zeros_initializer(), use_resource=True))
    bump = tf.group([v.assign_add(tf.ones_like(v)) for v in variables]
                    + [step.assign_add(1)])
    return step, variables, bump


def _counters(prefix):
    reader = tf.train.load_checkpoint(prefix)
    values = [reader.get_tensor(f"v{i}") for i in range(_NUM_VARS)]
    assert all(np.all(v == v[0]) for v in values)
    return int(reader.get_tensor("global_step")), [int(v[0]) for v in values]


@pytest.mark.timeout(300)
def test_background_save_holds_the_snapshot_step_while_training_goes_on(servers, tmp_path):
    fence.release_all()
    model_dir = str(tmp_path / "m")
    # Groups of a few variables each: many separate gathers per checkpoint.
    policy = ckpt.CheckpointPolicy(keep_last=10, max_group_bytes=4 * 2048 * 4)
    with tf.Graph().as_default():
        step, _, bump = _graph()
        saver = ckpt.GatheredSaver(model_dir, policy, device="/job:chief/task:0/device:CPU:0")
        saver.build()
        with tf.compat.v1.Session(servers) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saved = []
            for _ in range(4):
                for _ in range(7):
                    sess.run(bump)
                saved.append(saver.save_async(sess))
                for _ in range(25):  # updates while the groups are gathered and written
                    sess.run(bump)
            saver.wait()
            final = saver.save(sess, None)  # the synchronous API, named by the snapshot
            end_step = int(sess.run(step))
    assert saved == [7, 39, 71, 103]
    assert final.endswith(f"ckpt-{end_step}/model.ckpt-{end_step}")
    for name_step in saved + [end_step]:
        directory = os.path.join(model_dir, f"ckpt-{name_step}")
        stored_step, counters = _counters(os.path.join(directory, f"model.ckpt-{name_step}"))
        manifest = json.load(open(os.path.join(directory, "MANIFEST.json")))
        assert stored_step == name_step == manifest["step"]
        assert counters == [name_step] * _NUM_VARS  # spread 0


@pytest.mark.timeout(300)
def test_fenced_background_save_is_raised_at_the_next_poll(servers, tmp_path):
    fence.release_all()
    model_dir = str(tmp_path / "m")
    with tf.Graph().as_default():
        _, _, bump = _graph()
        saver = ckpt.GatheredSaver(model_dir, ckpt.CheckpointPolicy(),
                                   device="/job:chief/task:0/device:CPU:0")
        saver.build()
        with tf.compat.v1.Session(servers) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(bump)
            saver.save(sess, None)
            fence.release_all()
            fence.acquire(model_dir)  # a newer chief (in effect another process)
            sess.run(bump)
            saver.save_async(sess)
            with pytest.raises(ckpt.FencedError):
                saver.wait()
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [1]
