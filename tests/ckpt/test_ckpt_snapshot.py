"""One-step snapshots on a real (in-process, gRPC on localhost) cluster of 2 ps.

Every variable counts the updates it received, and ``global_step`` too, all
bumped by one op as an asynchronous worker would. A checkpoint must hold one
moment: every counter equal to its stored global_step, which equals the step
in its name and in its manifest, however many updates land while the groups
are gathered and written in the background.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt
from bwtf.ckpt import fence

from ckpt_cluster import free_port
from ckpt_cluster import task_env
from ckpt_cluster import wait_for

_NUM_VARS = 12
# The chief's sessions never wait for the worker task (started by one test only).
_CHIEF_ONLY = tf.compat.v1.ConfigProto(device_filters=["/job:chief", "/job:ps"])

# An asynchronous worker in its own process: it builds the same variables and
# bumps them all, and the global step, behind its update gate (as bwtf's
# model_fn builds a worker's update), in a loop, until its stop file appears.
_WORKER = """
import json, os, sys
import tensorflow as tf
sys.path.insert(0, os.environ["TEST_DIR"])
import test_ckpt_snapshot as t
tf.compat.v1.disable_eager_execution()
cluster = tf.train.ClusterSpec(json.loads(os.environ["CLUSTER"]))
server = tf.distribute.Server(cluster, job_name="worker", task_index=0)
step, _, bump = t._graph(size=int(os.environ["SIZE"]), stripe=1)
config = tf.compat.v1.ConfigProto(device_filters=["/job:worker/task:0", "/job:ps"])
with tf.compat.v1.Session(server.target, config=config) as sess:
    while not os.path.exists(os.environ["STOP"]):
        sess.run(bump)
"""


@pytest.fixture(scope="module")
def servers():
    ports = [free_port() for _ in range(4)]
    spec = {"chief": [f"localhost:{ports[0]}"],
            "ps": [f"localhost:{p}" for p in ports[1:3]],
            "worker": [f"localhost:{ports[3]}"]}  # only the worker test starts it
    cluster = tf.train.ClusterSpec(spec)
    made = [tf.distribute.Server(cluster, job_name="chief", task_index=0),
            tf.distribute.Server(cluster, job_name="ps", task_index=0),
            tf.distribute.Server(cluster, job_name="ps", task_index=1)]
    made[0].spec = spec
    yield made[0]


def _graph(size=2048, stripe=0):
    with tf.device("/job:ps/task:0"):
        step = tf.compat.v1.train.get_or_create_global_step()
    variables = []
    for i in range(_NUM_VARS):
        with tf.device(f"/job:ps/task:{i % 2}"):
            variables.append(tf.compat.v1.get_variable(
                f"v{i}", [size], initializer=tf.zeros_initializer(), use_resource=True))
    bump = ckpt.gated_update(lambda: tf.group([v.assign_add(tf.ones_like(v)) for v in variables]
                                              + [step.assign_add(1)]), stripe=stripe)
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
        with tf.compat.v1.Session(servers.target, config=_CHIEF_ONLY) as sess:
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
        with tf.compat.v1.Session(servers.target, config=_CHIEF_ONLY) as sess:
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


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoints_hold_one_step_while_a_worker_process_updates(servers, tmp_path):
    """Spread 0 under a real asynchronous worker (its own process and session)
    that keeps updating every variable while the chief snapshots, gathers in
    many small groups and commits in the background, save after save."""
    fence.release_all()
    model_dir = str(tmp_path / "m")
    size = 256 * 1024  # 1 MiB per variable: a read of all of them takes a while
    policy = ckpt.CheckpointPolicy(keep_last=20, max_group_bytes=2 * size * 4)
    stop = tmp_path / "stop"
    with tf.Graph().as_default():
        step, _, _ = _graph(size=size)
        saver = ckpt.GatheredSaver(model_dir, policy, device="/job:chief/task:0/device:CPU:0")
        saver.build()
        with tf.compat.v1.Session(servers.target, config=_CHIEF_ONLY) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            env = task_env(CLUSTER=json.dumps(servers.spec), STOP=str(stop), SIZE=str(size),
                           TEST_DIR=os.path.dirname(os.path.abspath(__file__)))
            worker = subprocess.Popen([sys.executable, "-c", _WORKER], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                assert wait_for(lambda: sess.run(step) >= 5 or worker.poll() is not None, 240)
                saved = []
                for _ in range(6):
                    before = int(sess.run(step))
                    saved.append(saver.save_async(sess))
                    assert wait_for(lambda b=before: sess.run(step) > b + 2
                                    or worker.poll() is not None, 120)
                saver.wait()
                saved.append(int(saver.save(sess, None).rsplit("-", 1)[1]))
                assert worker.poll() is None, worker.communicate()[0].decode()[-3000:]
            finally:
                stop.touch()
                output = worker.communicate(timeout=120)[0].decode()
    assert worker.returncode == 0, output[-3000:]
    assert len(set(saved)) == len(saved), saved  # the worker moved on between saves
    for name_step in saved:
        directory = os.path.join(model_dir, f"ckpt-{name_step}")
        stored_step, counters = _counters(os.path.join(directory, f"model.ckpt-{name_step}"))
        manifest = json.load(open(os.path.join(directory, "MANIFEST.json")))
        assert stored_step == name_step == manifest["step"]
        assert max(counters) - min(counters) == 0, (name_step, counters)
        assert counters == [name_step] * _NUM_VARS
