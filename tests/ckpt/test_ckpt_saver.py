"""GatheredSaver in one process: round trips, stock readers, SavedModel, bad input."""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt
from bwtf.ckpt import commit

import ckpt_cluster


def _graph(rows=40, extra=False):
    """Plain, partitioned and slot variables plus the global step."""
    step = tf.compat.v1.train.get_or_create_global_step()
    w = tf.compat.v1.get_variable("w", [rows, 30])
    parts = tf.compat.v1.get_variable("parts", [12, 5],
                                      partitioner=tf.compat.v1.fixed_size_partitioner(3))
    if extra:
        tf.compat.v1.get_variable("only_in_new_model", [3])
    loss = tf.reduce_sum(w) + tf.reduce_sum(parts.as_tensor())
    train = tf.compat.v1.train.AdamOptimizer(0.1).minimize(loss, global_step=step)
    return step, train


def _values(sess):
    variables = tf.compat.v1.global_variables()
    return dict(zip([v.name for v in variables], sess.run(variables)))


def _train_and_save(model_dir, steps, policy):
    with tf.Graph().as_default():
        step, train = _graph()
        saver = ckpt.GatheredSaver(model_dir, policy)
        saver.build()
        init = tf.compat.v1.global_variables_initializer()
        saved = {}
        with tf.compat.v1.Session() as sess:
            sess.run(init)
            for _ in range(steps):
                sess.run(train)
                path = saver.save(sess, None, global_step=step)
                saved[int(sess.run(step))] = (path, _values(sess))
        return saved


@pytest.mark.parametrize("group_bytes", [1, 2000, 10 ** 9])
def test_round_trip_of_plain_partitioned_slot_variables(tmp_path, group_bytes):
    policy = ckpt.CheckpointPolicy(max_group_bytes=group_bytes, keep_last=3)
    saved = _train_and_save(str(tmp_path), 2, policy)
    path, values = saved[2]
    with tf.Graph().as_default():
        _graph()
        saver = ckpt.GatheredSaver(str(tmp_path), policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, path)
            restored = _values(sess)
    assert restored.keys() == values.keys()
    for name in values:
        np.testing.assert_array_equal(restored[name], values[name], err_msg=name)
    assert any("Adam" in name for name in values) and any("part_2" in name for name in values)


def test_stock_tf_readers_see_the_checkpoint(tmp_path):
    saved = _train_and_save(str(tmp_path), 2, ckpt.CheckpointPolicy())
    assert tf.train.latest_checkpoint(str(tmp_path)) == saved[2][0]
    reader = tf.train.load_checkpoint(str(tmp_path))
    assert reader.get_variable_to_shape_map()["parts"] == [12, 5]
    np.testing.assert_array_equal(reader.get_tensor("w"), saved[2][1]["w:0"])
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [saved[1][0], saved[2][0]]


def _break_checksum_in_manifest(directory, data):
    """The data file is intact for TF (RestoreV2 succeeds) but does not match
    the manifest: restore must still refuse it, after assigning its values."""
    path = directory / "MANIFEST.json"
    manifest = json.loads(path.read_text())
    meta = manifest["files"][data]
    algorithm = manifest["checksum"]
    meta[algorithm] = (meta[algorithm] + 1) % 2 ** 32
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["data bytes", "manifest checksum"])
def test_broken_newest_falls_back_to_newest_intact(tmp_path, caplog, damage):
    policy = ckpt.CheckpointPolicy()
    saved = _train_and_save(str(tmp_path), 2, policy)
    data = [f for f in os.listdir(tmp_path / "ckpt-2") if ".data-" in f][0]
    if damage == "data bytes":
        with open(tmp_path / "ckpt-2" / data, "r+b") as f:
            f.write(b"\0\0\0\0")
    else:
        _break_checksum_in_manifest(tmp_path / "ckpt-2", data)
    with tf.Graph().as_default():
        step, _ = _graph()
        saver = ckpt.GatheredSaver(str(tmp_path), policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path)))
            assert sess.run(step) == 1
            np.testing.assert_array_equal(_values(sess)["w:0"], saved[1][1]["w:0"])
    assert "CRC32" in caplog.text and "ckpt-2" in caplog.text


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    policy = ckpt.CheckpointPolicy()
    saved = _train_and_save(str(tmp_path), 1, policy)
    with tf.Graph().as_default():
        _graph(rows=41, extra=True)
        saver = ckpt.GatheredSaver(str(tmp_path), policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            with pytest.raises(ckpt.CheckpointError, match="belongs to a different model") as e:
                saver.restore(sess, saved[1][0])
    assert "only_in_new_model" in str(e.value) and "[40, 30]" in str(e.value)


def test_saved_model_export_and_load_through_saver_def(tmp_path):
    policy = ckpt.CheckpointPolicy(max_group_bytes=100)
    export_dir = str(tmp_path / "export")
    with tf.Graph().as_default():
        _graph()
        saver = ckpt.GatheredSaver(str(tmp_path / "model"), policy)
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session() as sess:
            sess.run(init)
            expected = _values(sess)
            builder = tf.compat.v1.saved_model.Builder(export_dir)
            builder.add_meta_graph_and_variables(sess, ["serve"], saver=saver)
            builder.save()
    assert not os.path.exists(tmp_path / "model" / "checkpoint")
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
        loaded = _values(sess)
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)


def test_gathered_scaffold_refuses_a_second_saver(tmp_path):
    with pytest.raises(ValueError, match="saver="):
        ckpt.gathered_scaffold(str(tmp_path), ckpt.CheckpointPolicy(), saver=object())


def test_readonly_model_dir_is_reported_before_training(tmp_path, readonly_for_ps):
    code = "from bwtf import ckpt; import sys; ckpt.require_writable_model_dir(sys.argv[1])"
    run = subprocess.run(ckpt_cluster.readonly_prefix(str(tmp_path))
                         + [sys.executable, "-c", code, str(tmp_path)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode != 0
    assert "is not writable" in run.stderr and "Read-only file system" in run.stderr


def test_step_zero_save_without_global_step(tmp_path):
    with tf.Graph().as_default():
        tf.compat.v1.get_variable("v", [2])
        saver = ckpt.GatheredSaver(str(tmp_path), ckpt.CheckpointPolicy())
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session() as sess:
            sess.run(init)
            path = saver.save(sess, None)
    assert path == f"{tmp_path}/ckpt-0/model.ckpt-0"
    assert commit.check(str(tmp_path), f"{tmp_path}/ckpt-0").intact


@pytest.mark.parametrize("pointer", [b"{garbage", b'{"step": 1}', b"[]"])
def test_take_ownership_repairs_a_stale_or_garbage_pointer_and_hooks_write_nothing(
        tmp_path, pointer):
    saved = _train_and_save(str(tmp_path), 2, ckpt.CheckpointPolicy())
    (tmp_path / commit.POINTER).write_bytes(pointer)
    stale = 'model_checkpoint_path: "ckpt-1/model.ckpt-1"\n'
    (tmp_path / commit.STATE_FILE).write_text(stale)
    with tf.Graph().as_default():  # what model_fn does on every task
        ckpt.chief_hooks(str(tmp_path), None, ckpt.CheckpointPolicy())
    assert (tmp_path / commit.STATE_FILE).read_text() == stale
    assert ckpt.take_ownership(str(tmp_path)).step == 2
    assert tf.train.latest_checkpoint(str(tmp_path)) == saved[2][0]


def _monitored_run(model_dir, policy, steps, before_first_step=None):
    """Runs up to ``steps`` train steps in a MonitoredSession with the chief hooks."""
    with tf.Graph().as_default():
        step, train = _graph()
        scaffold = ckpt.gathered_scaffold(model_dir, policy)
        creator = tf.compat.v1.train.ChiefSessionCreator(scaffold=scaffold,
                                                         checkpoint_dir=model_dir)
        hooks = ckpt.chief_hooks(model_dir, scaffold, policy)
        done = 0
        with tf.compat.v1.train.MonitoredSession(creator, hooks=hooks) as sess:
            if before_first_step:
                before_first_step()
            while not sess.should_stop() and done < steps:
                sess.run(train)
                done += 1
        return done


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_current_step_and_stops(tmp_path, signum):
    policy = ckpt.CheckpointPolicy(save_steps=1000)
    previous = signal.getsignal(signum)
    done = _monitored_run(str(tmp_path), policy, 10,
                          before_first_step=lambda: os.kill(os.getpid(), signum))
    assert done == 1
    assert ckpt.stop_requested() == signal.Signals(signum).name
    assert ckpt.latest_intact_checkpoint(str(tmp_path)).step == 1
    assert signal.getsignal(signum) == previous  # the hook put the old handler back


def test_periodic_saves_and_restart_from_the_last(tmp_path):
    policy = ckpt.CheckpointPolicy(save_steps=3, keep_last=10)
    assert _monitored_run(str(tmp_path), policy, 7) == 7
    assert [s.step for s in ckpt.list_checkpoints(str(tmp_path))] == [3, 6, 7]
    assert ckpt.stop_requested() is None
    _monitored_run(str(tmp_path), policy, 2)
    assert [s.step for s in ckpt.list_checkpoints(str(tmp_path))] == [3, 6, 7, 9]


def test_malformed_walltime_env_fails_when_the_hooks_are_made(tmp_path):
    with pytest.raises(ckpt.WalltimeEnvError, match="SLURM_JOB_END_TIME='later'"):
        ckpt.chief_hooks(str(tmp_path), None, ckpt.CheckpointPolicy(),
                         environ={"SLURM_JOB_END_TIME": "later"})
    assert ckpt.latest_intact_checkpoint(str(tmp_path)) is None
