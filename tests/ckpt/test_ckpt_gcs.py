"""gs:// checkpoints against a real GCS API emulator on localhost (gcsfs).

Object stores cannot rename atomically, so the files go in place and the
COMMITTED marker is written last; a directory without it is never trusted.
The saver writes through a local staging directory and restores by download.
"""
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt
from bwtf.ckpt import commit

_BUCKET = "bwtf-ckpt-test"


@pytest.fixture(scope="module")
def gcs_emulator():
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(exe):
        exe = shutil.which("gcp-storage-emulator")
    if exe is None:
        pytest.skip("gcp-storage-emulator is not installed (pip install 'bwtf[test]')")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "start", f"--port={port}", "--in-memory",
                             f"--default-bucket={_BUCKET}", "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://localhost:{port}"
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the GCS emulator did not start listening within 30 s")
        yield f"gs://{_BUCKET}"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def _graph():
    step = tf.compat.v1.train.get_or_create_global_step()
    w = tf.compat.v1.get_variable("w", [50, 20])
    return step, w


@pytest.mark.timeout(180)
def test_gcs_commit_marker_save_restore_and_prune(gcs_emulator, tmp_path):
    model_dir = f"{gcs_emulator}/run-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(keep_last=2, max_group_bytes=1000)
    with tf.Graph().as_default():
        step, w = _graph()
        bump = tf.compat.v1.assign_add(step, 1)
        saver = ckpt.GatheredSaver(model_dir, policy)
        saver.build()
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session() as sess:
            sess.run(init)
            for _ in range(3):
                sess.run(bump)
                saver.save(sess, None, global_step=step)
            saved = sess.run(w)
    store = commit.as_storage(model_dir)
    names = [n for n in store.listdir(store.root) if not n.startswith(".bwtf-owner-")]
    assert names == ["LATEST", "checkpoint", "ckpt-2", "ckpt-3"]
    assert commit.MARKER in store.listdir(store.path("ckpt-3"))
    ref = ckpt.latest_intact_checkpoint(model_dir)
    assert ref.step == 3 and ref.path == f"{model_dir}/ckpt-3/model.ckpt-3"

    with tf.Graph().as_default():
        step, w = _graph()
        saver = ckpt.GatheredSaver(model_dir, policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, ref.path)
            assert sess.run(step) == 3
            assert np.array_equal(sess.run(w), saved)

    # Without its marker the newest is uncommitted: readers fall back and say why.
    store.fs.rm(store.path("ckpt-3", commit.MARKER))
    assert ckpt.latest_intact_checkpoint(model_dir).step == 2
    statuses = ckpt.list_checkpoints(model_dir)
    assert [(s.step, s.intact) for s in statuses] == [(2, True), (3, False)]
    assert "COMMITTED" in statuses[-1].reason


_READER = """
import sys, time
from bwtf import ckpt
deadline = time.time() + 120
seen = []
while time.time() < deadline:
    ref = ckpt.latest_intact_checkpoint(sys.argv[1])
    step = ref.step if ref else None
    if not seen or seen[-1] != step:
        seen.append(step)
        print(step, flush=True)
    if step == 3:
        sys.exit(0)
    time.sleep(0.2)
sys.exit(1)
"""


def _fake(model_dir, step, ownership=None):
    pending = commit.PendingCheckpoint(model_dir, step, ownership=ownership)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(pending.prefix + suffix, "wb") as f:
            f.write(b"%d" % step * 50)
    try:
        return pending.finalize({"w": {"shape": [1], "dtype": "float32"}})
    except BaseException:
        pending.abort()
        raise


@pytest.mark.timeout(180)
def test_gcs_save_and_restore_log_no_warnings(gcs_emulator, caplog):
    """Without Google credentials (here, as for any emulator user) gcsfs's
    default class warns on every call that it cannot read the bucket's
    layout: hundreds of lines per checkpoint. bwtf's saves stay quiet."""
    model_dir = f"{gcs_emulator}/quiet-{os.getpid()}-{time.time_ns()}"
    caplog.set_level(logging.WARNING)
    with tf.Graph().as_default():
        step, _ = _graph()
        saver = ckpt.GatheredSaver(model_dir, ckpt.CheckpointPolicy(keep_last=1))
        saver.build()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for _ in range(2):
                sess.run(tf.compat.v1.assign_add(step, 1))
                saver.save(sess, None, global_step=step)
            saver.restore(sess, ckpt.latest_intact_checkpoint(model_dir).path)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 2
    noisy = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, noisy


@pytest.mark.timeout(180)
def test_long_lived_reader_sees_each_new_gcs_checkpoint(gcs_emulator):
    """gcsfs caches listings: a reader that never refreshed them would never
    see a checkpoint committed after its first look."""
    model_dir = f"{gcs_emulator}/reader-{os.getpid()}-{time.time_ns()}"
    _fake(model_dir, 1)
    reader = subprocess.Popen([sys.executable, "-c", _READER, model_dir],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "1"
        _fake(model_dir, 2)
        assert reader.stdout.readline().strip() == "2"
        _fake(model_dir, 3)
        out, err = reader.communicate(timeout=150)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert reader.returncode == 0 and out.split() == ["3"], err[-2000:]


@pytest.mark.timeout(180)
def test_two_gcs_writers_the_older_is_fenced_and_the_marker_names_the_manifest(gcs_emulator):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    model_dir = f"{gcs_emulator}/fence-{os.getpid()}-{time.time_ns()}"
    fence.release_all()
    old = fence.acquire(model_dir)
    _fake(model_dir, 1, old)
    fence.release_all()
    new = fence.acquire(model_dir)
    with pytest.raises(ckpt.FencedError):
        _fake(model_dir, 2, old)
    _fake(model_dir, 3, new)
    fence.release_all()
    store = commit.as_storage(model_dir)
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [1, 3]
    import hashlib, json  # pylint: disable=import-outside-toplevel,multiple-imports
    marker = json.loads(store.read_bytes(store.path("ckpt-3", commit.MARKER)))
    manifest = store.read_bytes(store.path("ckpt-3", commit.MANIFEST))
    assert marker["manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert marker["writer"]["pid"] == os.getpid() and marker["generation"] == new.generation
    # A manifest rewritten after the commit no longer matches its marker.
    store.fs.pipe_file(store.path("ckpt-3", commit.MANIFEST), manifest.replace(b'"step"', b'"step" '))
    status = ckpt.list_checkpoints(model_dir)[-1]
    assert not status.intact and "marker" in status.reason


@pytest.mark.timeout(180)
def test_gcs_staging_goes_to_the_named_local_dir_and_a_full_one_is_refused(
        gcs_emulator, tmp_path, monkeypatch):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/staging-{os.getpid()}-{time.time_ns()}"
    staging = tmp_path / "scratch"
    policy = ckpt.CheckpointPolicy(max_group_bytes=1000, staging_dir=str(staging))
    seen = []
    real_upload = commit.storage_lib.Storage.upload

    def upload(self, local_path, path):
        seen.append(local_path)
        real_upload(self, local_path, path)

    monkeypatch.setattr(commit.storage_lib.Storage, "upload", upload)
    with tf.Graph().as_default():
        step, _ = _graph()
        saver = ckpt.GatheredSaver(model_dir, policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, None, global_step=1)
            assert seen and all(p.startswith(str(staging)) for p in seen)
            assert os.listdir(staging) == []  # removed once uploaded
            monkeypatch.setattr(commit.shutil, "disk_usage",
                                lambda path: shutil._ntuple_diskusage(10, 10, 10))
            with pytest.raises(ckpt.CheckpointError, match="has 0 MiB free"):
                saver.save(sess, None, global_step=2)
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [1]
