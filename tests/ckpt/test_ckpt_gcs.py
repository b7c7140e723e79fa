"""gs:// checkpoints against a real GCS API emulator on localhost (gcsfs).

Object stores cannot rename atomically, so the files go in place and the
COMMITTED marker is written last; a directory without it is never trusted.
The saver uploads each group's data file as soon as it is written, so its
local staging holds only the groups in flight (tested on a real 8 MiB
tmpfs), and restores by download.
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
    """Against an emulator (no Storage Control API, no Google credentials)
    gcsfs's default class warns on every call that it cannot read the
    bucket's layout: hundreds of lines per checkpoint. bwtf's saves stay quiet."""
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


# -- streaming: local staging is bounded by the groups in flight ----------------

_MIB = 2**20
# 16 variables of 2 MiB: a 32 MiB checkpoint, four times the 8 MiB tmpfs below.
_BIG_VARS, _BIG_SHAPE = 16, [512, 1024]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 8 MiB tmpfs (what a compute node's /tmp often is), unmounted after."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    try:
        yield str(mount_point)
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def _big_graph():
    step = tf.compat.v1.train.get_or_create_global_step()
    init = tf.compat.v1.random_normal_initializer()
    weights = [tf.compat.v1.get_variable(f"w{i}", _BIG_SHAPE, initializer=init) for i in range(_BIG_VARS)]
    return step, weights


class _PeakUsage:
    """Samples a directory's filesystem usage in a thread; ``peak`` in bytes."""

    def __init__(self, path):
        import threading  # pylint: disable=import-outside-toplevel
        self._path, self.peak, self._stop = path, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, shutil.disk_usage(self._path).used)
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _save_big(model_dir, policy, save_step=1):
    """Saves the big graph at ``save_step``; returns its values by name."""
    with tf.Graph().as_default():
        step, weights = _big_graph()
        saver = ckpt.GatheredSaver(model_dir, policy)
        saver.build()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(tf.compat.v1.assign(step, save_step))
            saver.save(sess, None, global_step=save_step)
            return {w.op.name: v for w, v in zip(weights, sess.run(weights))}


def _restore_big(model_dir, staging_dir):
    """Restores the newest intact checkpoint (fully verified); (step, values)."""
    ref = ckpt.latest_intact_checkpoint(model_dir)
    with tf.Graph().as_default():
        step, weights = _big_graph()
        saver = ckpt.GatheredSaver(model_dir, ckpt.CheckpointPolicy(staging_dir=staging_dir))
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, ref.path)
            return sess.run(step), {w.op.name: v for w, v in zip(weights, sess.run(weights))}


@pytest.mark.timeout(600)
def test_gcs_checkpoint_four_times_the_staging_tmpfs_saves_and_restores_exactly(
        gcs_emulator, small_tmpfs, tmp_path):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/stream-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB, staging_dir=small_tmpfs)
    before = shutil.disk_usage(small_tmpfs).used
    with _PeakUsage(small_tmpfs) as usage:
        saved = _save_big(model_dir, policy)
    fence.release_all()
    # Two 2 MiB groups in flight at most, plus the index; nothing left behind.
    assert usage.peak - before <= 4.5 * _MIB, usage.peak - before
    assert os.listdir(small_tmpfs) == []
    store = commit.as_storage(model_dir)
    manifest = commit.read_manifest(store, store.path("ckpt-1"))
    data = sorted(n for n in manifest["files"] if ".data-" in n)
    count = len(data)  # one shard per group: 16 weights and the global step
    assert count > _BIG_VARS
    assert data == [f"model.ckpt-1.data-{i:05d}-of-{count:05d}" for i in range(count)]
    total = sum(meta["size"] for meta in manifest["files"].values())
    assert total >= 4 * 8 * _MIB
    print(f"staging peak {(usage.peak - before) / _MIB:.2f} MiB of a {total / _MIB:.2f} MiB checkpoint "
          f"({count} groups)")
    # The manifest's sizes and checksums are those of the objects in the bucket,
    # as a reader verifies them (no cached verification from the writer).
    algorithm = commit.checksum_of(manifest)
    for name, meta in manifest["files"].items():
        path = store.path("ckpt-1", name)
        assert store.size(path) == meta["size"], name
        assert store.checksum(path, algorithm) == meta[algorithm], name
    commit.forget_verified()
    ckpt.verify_checkpoint(f"{model_dir}/ckpt-1", full=True)
    # A stock reader of the downloaded files agrees with TF's own per-tensor CRCs.
    step, restored = _restore_big(model_dir, str(tmp_path / "restore"))
    assert step == 1 and restored.keys() == saved.keys()
    for name, value in saved.items():
        assert np.array_equal(restored[name], value), name


@pytest.mark.timeout(300)
def test_gcs_staging_too_small_for_the_groups_in_flight_is_refused_before_any_upload(
        gcs_emulator, small_tmpfs):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/refused-{os.getpid()}-{time.time_ns()}"
    # Groups of 16 MiB: two in flight need 32 MiB, the tmpfs has 8.
    policy = ckpt.CheckpointPolicy(max_group_bytes=32 * _MIB, staging_dir=small_tmpfs)
    with pytest.raises(ckpt.CheckpointError) as raised:
        _save_big(model_dir, policy)
    fence.release_all()
    message = str(raised.value)
    assert "\n" not in message
    assert f"staging directory {small_tmpfs} has 8 MiB free" in message
    assert "groups in flight" in message and "max_group_bytes" in message
    store = commit.as_storage(model_dir)
    assert [n for n in store.listdir(store.root) if n.startswith("ckpt-")] == []
    assert os.listdir(small_tmpfs) == []


@pytest.mark.timeout(600)
def test_gcs_upload_failure_midway_leaves_nothing_trusted_and_the_next_save_succeeds(
        gcs_emulator, small_tmpfs, tmp_path, monkeypatch):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/fail-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB, staging_dir=small_tmpfs)
    store = commit.as_storage(model_dir)
    real_upload = commit.storage_lib.Storage.upload
    calls = []

    def failing_upload(self, local_path, path):
        calls.append(path)
        if len(calls) == 5:
            real_upload(self, local_path, path)  # it landed, but the writer hears an error
            raise OSError("connection reset by peer (injected)")
        real_upload(self, local_path, path)

    monkeypatch.setattr(commit.storage_lib.Storage, "upload", failing_upload)
    with pytest.raises(OSError, match="injected"):
        _save_big(model_dir, policy, save_step=1)
    monkeypatch.setattr(commit.storage_lib.Storage, "upload", real_upload)
    assert ckpt.latest_intact_checkpoint(model_dir) is None
    # The aborted save removed every object it had uploaded, and its staging.
    assert store.listdir(store.path("ckpt-1")) == []
    assert os.listdir(small_tmpfs) == []
    saved = _save_big(model_dir, policy, save_step=1)
    fence.release_all()
    step, restored = _restore_big(model_dir, str(tmp_path / "restore"))
    assert step == 1 and all(np.array_equal(restored[n], v) for n, v in saved.items())


_KILLED_WRITER = """
import sys
import tensorflow as tf
from bwtf import ckpt
sys.path.insert(0, sys.argv[3])
import test_ckpt_gcs as t
t._save_big(sys.argv[1], ckpt.CheckpointPolicy(max_group_bytes=4 * t._MIB, staging_dir=sys.argv[2]),
            save_step=2)
"""


@pytest.mark.timeout(600)
def test_gcs_writer_killed_between_uploads_leaves_nothing_trusted(
        gcs_emulator, small_tmpfs, tmp_path):
    """SIGKILL after the 5th of 17 uploads (no cleanup runs): the objects stay,
    unmarked; readers keep the older checkpoint, and the next save of that
    step replaces the leftovers, in the bucket and in the staging dir."""
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/killed-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB, staging_dir=small_tmpfs)
    _save_big(model_dir, policy, save_step=1)
    fence.release_all()
    env = dict(os.environ, BWTF_CKPT_FAILPOINT="group_uploaded:5")
    writer = subprocess.run([sys.executable, "-c", _KILLED_WRITER, model_dir, small_tmpfs,
                             os.path.dirname(__file__)],
                            env=env, capture_output=True, text=True, timeout=400, check=False)
    assert writer.returncode == -9, writer.stderr[-3000:]
    store = commit.as_storage(model_dir)
    assert len(store.listdir(store.path("ckpt-2"))) >= 5  # uploaded, never marked
    commit.forget_verified()
    assert ckpt.latest_intact_checkpoint(model_dir).step == 1
    status = ckpt.list_checkpoints(model_dir)[-1]
    assert status.step == 2 and not status.intact and commit.MARKER in status.reason
    # A killed writer leaves its groups in flight on the node. A writer that
    # looks dead but changed its files lately may live in another PID
    # namespace, so they stay; once idle for long, the next save removes them
    # before it measures the free space.
    leftovers = os.listdir(small_tmpfs)
    assert leftovers
    commit._remove_dead_scratch(small_tmpfs)  # pylint: disable=protected-access
    assert os.listdir(small_tmpfs) == leftovers
    long_ago = time.time() - commit._SCRATCH_IDLE_SECS - 60  # pylint: disable=protected-access
    for name in leftovers:
        for entry in [os.path.join(small_tmpfs, name)] + [e.path for e in os.scandir(os.path.join(small_tmpfs, name))]:
            os.utime(entry, (long_ago, long_ago), follow_symlinks=False)
    saved = _save_big(model_dir, policy, save_step=2)
    fence.release_all()
    assert os.listdir(small_tmpfs) == []
    step, restored = _restore_big(model_dir, str(tmp_path / "restore"))
    assert step == 2 and all(np.array_equal(restored[n], v) for n, v in saved.items())


@pytest.mark.timeout(600)
def test_gcs_streaming_writer_fenced_midway_uploads_and_deletes_nothing_more(
        gcs_emulator, small_tmpfs, monkeypatch):
    """A newer owner takes model_dir over while the older one streams: the
    older one's next upload is refused, and what it already uploaded is not
    deleted by it (the newer owner may write the same names); unmarked, it is
    never trusted."""
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/fenced-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB, staging_dir=small_tmpfs)
    real_upload = commit.storage_lib.Storage.upload
    calls = []

    def upload_then_taken_over(self, local_path, path):
        real_upload(self, local_path, path)
        calls.append(path)
        if len(calls) == 3:
            fence.release_all()
            fence.acquire(model_dir)  # the "newer chief"

    monkeypatch.setattr(commit.storage_lib.Storage, "upload", upload_then_taken_over)
    with pytest.raises(ckpt.FencedError):
        _save_big(model_dir, policy, save_step=1)
    fence.release_all()
    store = commit.as_storage(model_dir)
    # At most the other group in flight got past its check after the takeover.
    assert 3 <= len(calls) <= 4
    assert sorted(store.listdir(store.path("ckpt-1"))) == sorted(p.rsplit("/", 1)[-1] for p in calls)
    assert ckpt.latest_intact_checkpoint(model_dir) is None
    assert os.listdir(small_tmpfs) == []


@pytest.mark.timeout(600)
def test_gcs_resave_of_an_intact_step_uploads_nothing_and_keeps_it(
        gcs_emulator, small_tmpfs, monkeypatch):
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/resave-{os.getpid()}-{time.time_ns()}"
    policy = ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB, staging_dir=small_tmpfs)
    _save_big(model_dir, policy, save_step=1)
    store = commit.as_storage(model_dir)
    before = {n: store.stat(store.path("ckpt-1", n)) for n in store.listdir(store.path("ckpt-1"))}
    uploads = []
    monkeypatch.setattr(commit.storage_lib.Storage, "upload",
                        lambda self, local_path, path: uploads.append(path))
    _save_big(model_dir, policy, save_step=1)  # other values, same step
    fence.release_all()
    assert uploads == []
    after = {n: store.stat(store.path("ckpt-1", n)) for n in store.listdir(store.path("ckpt-1"))}
    assert after == before
    assert os.listdir(small_tmpfs) == []


@pytest.mark.timeout(300)
def test_a_failed_gcs_download_leaves_no_partial_copy_behind(gcs_emulator, tmp_path, monkeypatch):
    """A long-lived evaluator restores again and again: a restore whose download fails (a
    network error, not a vanished file) must not leave its partial copy in the staging dir."""
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    model_dir = f"{gcs_emulator}/download-{os.getpid()}-{time.time_ns()}"
    _save_big(model_dir, ckpt.CheckpointPolicy(max_group_bytes=4 * _MIB))
    fence.release_all()
    real_download = commit.storage_lib.Storage.download
    calls = []

    def fails_on_the_third(self, path, local_path):
        calls.append(path)
        if len(calls) == 3:
            raise ConnectionResetError("connection reset by peer")
        return real_download(self, path, local_path)

    monkeypatch.setattr(commit.storage_lib.Storage, "download", fails_on_the_third)
    staging = tmp_path / "restore"
    staging.mkdir()
    with pytest.raises(ConnectionResetError):
        _restore_big(model_dir, str(staging))
    assert len(calls) == 3 and list(staging.iterdir()) == []
    monkeypatch.setattr(commit.storage_lib.Storage, "download", real_download)
    assert _restore_big(model_dir, str(staging))[0] == 1
