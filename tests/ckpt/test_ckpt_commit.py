"""Commit protocol, verification, retention and pointers, without TensorFlow.

A fake writer puts files shaped like TF's V2 output into the staging prefix;
the tests assert what exists on disk before and after finalize, what readers
pick, and that every kind of damage is reported by name.
"""
import errno
import json
import os
import uuid

import pytest

from bwtf import ckpt
from bwtf.ckpt import commit
from bwtf.ckpt import retention
from bwtf.ckpt import storage


def write_fake_checkpoint(model_dir, step, payload=None):
    """Commits a checkpoint whose data file holds ``payload``; returns its ref."""
    pending = commit.PendingCheckpoint(model_dir, step)
    with open(pending.prefix + ".index", "wb") as f:
        f.write(b"index-%d" % step)
    with open(pending.prefix + ".data-00000-of-00001", "wb") as f:
        f.write(payload if payload is not None else b"x" * 1000 + b"%d" % step)
    return pending.finalize({"w": {"shape": [10, 10], "dtype": "float32"}})


def listing(model_dir):
    """model_dir's entries, without the ownership records (see fence.py)."""
    return sorted(n for n in os.listdir(model_dir) if not n.startswith(".bwtf-owner-"))


def model_dirs(tmp_path):
    return [str(tmp_path / "model"), f"memory://bwtf-test-{uuid.uuid4().hex}/model"]


@pytest.fixture(params=["local", "memory"])
def model_dir(request, tmp_path):
    return model_dirs(tmp_path)[0 if request.param == "local" else 1]


def test_nothing_is_visible_before_finalize(tmp_path):
    model_dir = str(tmp_path / "m")
    pending = commit.PendingCheckpoint(model_dir, 7)
    open(pending.prefix + ".index", "wb").close()
    assert listing(model_dir) == [os.path.basename(pending.staging_dir)]
    assert ckpt.latest_intact_checkpoint(model_dir) is None
    ref = pending.finalize({})
    assert listing(model_dir) == ["LATEST", "checkpoint", "ckpt-7"]
    assert ref == commit.CheckpointRef(f"{model_dir}/ckpt-7/model.ckpt-7", 7, f"{model_dir}/ckpt-7")


def test_finalize_writes_manifest_and_tf_state_file(model_dir):
    write_fake_checkpoint(model_dir, 5)
    ref = write_fake_checkpoint(model_dir, 10)
    store = commit.as_storage(model_dir)
    manifest = json.loads(store.read_bytes(store.path("ckpt-10", "MANIFEST.json")))
    assert manifest["step"] == 10 and manifest["format"] == "bwtf-ckpt"
    assert set(manifest["files"]) == {"model.ckpt-10.index", "model.ckpt-10.data-00000-of-00001"}
    assert manifest["variables"] == {"w": {"shape": [10, 10], "dtype": "float32"}}
    assert manifest["writer"]["pid"] == os.getpid()
    state = store.read_bytes(store.path("checkpoint")).decode()
    assert 'model_checkpoint_path: "ckpt-10/model.ckpt-10"' in state
    assert 'all_model_checkpoint_paths: "ckpt-5/model.ckpt-5"' in state
    assert ckpt.latest_intact_checkpoint(model_dir) == ref


def test_object_store_checkpoint_without_marker_is_uncommitted(tmp_path):
    model_dir = model_dirs(tmp_path)[1]
    write_fake_checkpoint(model_dir, 1)
    write_fake_checkpoint(model_dir, 2)
    store = commit.as_storage(model_dir)
    store.fs.rm(store.path("ckpt-2", commit.MARKER))
    status = commit.list_checkpoints(model_dir)[-1]
    assert not status.intact and "COMMITTED" in status.reason
    assert ckpt.latest_intact_checkpoint(model_dir).step == 1


def _damage(store, step, how):
    directory = store.path(f"ckpt-{step}")
    data = store.path(f"ckpt-{step}", f"model.ckpt-{step}.data-00000-of-00001")
    manifest = store.path(f"ckpt-{step}", "MANIFEST.json")
    if how == "missing manifest":
        store.fs.rm(manifest)
    elif how == "garbage manifest":
        store.fs.pipe_file(manifest, b"{not json")
    elif how == "foreign manifest":
        store.fs.pipe_file(manifest, json.dumps({"format": "orbax", "step": step}).encode())
    elif how == "future format":
        m = json.loads(store.read_bytes(manifest))
        m["format_version"] = 99
        store.fs.pipe_file(manifest, json.dumps(m).encode())
    elif how == "unknown checksum":
        m = json.loads(store.read_bytes(manifest))
        m["checksum"] = "md5"
        store.fs.pipe_file(manifest, json.dumps(m).encode())
    elif how == "truncated data":
        store.fs.pipe_file(data, store.read_bytes(data)[:-10])
    elif how == "flipped byte":
        raw = bytearray(store.read_bytes(data))
        raw[3] ^= 0xFF
        store.fs.pipe_file(data, bytes(raw))
    elif how == "missing data":
        store.fs.rm(data)
    elif how == "manifest of another step":
        other = store.read_bytes(store.path("ckpt-1", "MANIFEST.json"))
        store.fs.pipe_file(manifest, other)
    return directory


@pytest.mark.parametrize("how, reason", [
    ("missing manifest", "no MANIFEST.json"),
    ("garbage manifest", "not valid JSON"),
    ("foreign manifest", "foreign MANIFEST.json"),
    ("future format", "format_version 99"),
    ("unknown checksum", "names checksum 'md5'"),
    ("truncated data", "truncated"),
    ("flipped byte", "CRC32"),
    ("missing data", "is missing"),
    ("manifest of another step", "for step 1, not 2"),
])
def test_damaged_newest_is_skipped_with_reason(model_dir, how, reason, caplog):
    write_fake_checkpoint(model_dir, 1)
    write_fake_checkpoint(model_dir, 2)
    store = commit.as_storage(model_dir)
    _damage(store, 2, how)
    ref = ckpt.latest_intact_checkpoint(model_dir)
    assert ref.step == 1
    assert reason in caplog.text and "ckpt-2" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match=reason):
        ckpt.verify_checkpoint(ref.directory.replace("ckpt-1", "ckpt-2"))


def test_a_worker_sees_the_final_checkpoint_only_once_it_is_intact(model_dir, caplog, monkeypatch):
    """final_checkpoint_step: a checkpoint at or past --train_steps that
    verifies in full (as the chief decides), quietly; one truncated, with a
    flipped byte, below the limit or not yet there is not it."""
    assert ckpt.final_checkpoint_step(model_dir, 37) is None  # No model_dir yet.
    write_fake_checkpoint(model_dir, 30)
    assert ckpt.final_checkpoint_step(model_dir, 37) is None
    store = commit.as_storage(model_dir)
    write_fake_checkpoint(model_dir, 37)
    _damage(store, 37, "truncated data")
    write_fake_checkpoint(model_dir, 38)
    _damage(store, 38, "flipped byte")  # The sizes are right: only the checksum tells.
    caplog.clear()
    assert ckpt.final_checkpoint_step(model_dir, 37) is None
    assert caplog.text == ""  # Polled every few seconds: it logs nothing.
    write_fake_checkpoint(model_dir, 40)
    write_fake_checkpoint(model_dir, 41)
    _damage(store, 41, "missing data")
    assert ckpt.final_checkpoint_step(model_dir, 37) == 40  # The newest intact one past the limit.
    assert ckpt.final_checkpoint_step(model_dir, 40) == 40
    assert ckpt.final_checkpoint_step(model_dir, 42) is None

    def refuse(*args, **kwargs):
        raise RuntimeError("503 Service Unavailable")  # As gcsfs's HttpError: not an OSError.

    monkeypatch.setattr(commit, "candidate_names", refuse)
    assert ckpt.final_checkpoint_step(model_dir, 37) is None


def _rewrite_manifest(store, step, change):
    path = store.path(f"ckpt-{step}", "MANIFEST.json")
    manifest = json.loads(store.read_bytes(path))
    change(manifest)
    store.fs.pipe_file(path, json.dumps(manifest).encode())


def _as_version_1(manifest):
    """A manifest as format version 1 wrote it: zlib CRC32s, no checksum entry."""
    import zlib  # pylint: disable=import-outside-toplevel
    manifest["format_version"] = 1
    del manifest["checksum"]
    for name, meta in manifest["files"].items():
        meta.pop("crc32c", None)
        meta["crc32"] = zlib.crc32(open(os.path.join(manifest["_dir"], name), "rb").read())
    del manifest["_dir"]


def test_version_1_manifests_still_verify(tmp_path):
    model_dir = str(tmp_path / "m")
    write_fake_checkpoint(model_dir, 1)
    store = commit.as_storage(model_dir)
    directory = store.path("ckpt-1")
    _rewrite_manifest(store, 1, lambda m: (m.__setitem__("_dir", directory), _as_version_1(m)))
    ckpt.verify_checkpoint(directory)
    _damage(store, 1, "flipped byte")
    with pytest.raises(ckpt.CheckpointError, match="CRC32 check"):
        ckpt.verify_checkpoint(directory)


def test_without_crc32c_extension_zlib_crc32_is_used_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "google_crc32c", None)
    model_dir = str(tmp_path / "m")
    ref = write_fake_checkpoint(model_dir, 3)
    store = commit.as_storage(model_dir)
    manifest = json.loads(store.read_bytes(store.path("ckpt-3", "MANIFEST.json")))
    assert manifest["checksum"] == "crc32"
    assert all("crc32" in meta for meta in manifest["files"].values())
    ckpt.verify_checkpoint(ref.directory)


def test_crc32c_manifest_without_the_package_is_skipped_with_reason(tmp_path, monkeypatch,
                                                                    caplog):
    if storage.default_checksum() != "crc32c":
        pytest.skip("google-crc32c's C extension is not installed, so no CRC32C manifest")
    model_dir = str(tmp_path / "m")
    write_fake_checkpoint(model_dir, 4)
    monkeypatch.setattr(storage, "google_crc32c", None)
    assert ckpt.latest_intact_checkpoint(model_dir) is None
    assert "pip install google-crc32c" in caplog.text


@pytest.mark.parametrize("size", [0, 1, 4095, storage._CHUNK, 2 * storage._CHUNK + 17])
@pytest.mark.parametrize("native", [True, False])
def test_file_checksums_match_the_reference(tmp_path, monkeypatch, size, native):
    """The zero-copy CRC32C (libcrc32c over a mapping) and the chunked
    fallback give google-crc32c's and zlib's values, at chunk edges too."""
    if storage.default_checksum() != "crc32c":
        pytest.skip("google-crc32c's C extension is not installed")
    import google_crc32c  # pylint: disable=import-outside-toplevel
    import zlib  # pylint: disable=import-outside-toplevel
    if native and storage._native_crc32c() is None:
        pytest.skip("libcrc32c cannot be loaded through ctypes here")
    if not native:
        monkeypatch.setattr(storage, "_native_crc32c", lambda: None)
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert storage.local_checksum(str(path), "crc32c") == google_crc32c.value(data)
    assert storage.local_checksum(str(path), "crc32") == zlib.crc32(data)


def test_sealed_file_renamed_in_staging_keeps_its_checksum(tmp_path):
    """What the saver does: seal a shard, rename it (as MergeV2Checkpoints
    does), change another sealed file after sealing; the manifest is right."""
    model_dir = str(tmp_path / "m")
    pending = commit.PendingCheckpoint(model_dir, 9)
    shard = os.path.join(pending.staging_dir, "part-0.data")
    with open(shard, "wb") as f:
        f.write(b"a" * 5000)
    pending.seal(shard)
    os.rename(shard, pending.prefix + ".data-00000-of-00001")
    with open(pending.prefix + ".index", "wb") as f:
        f.write(b"short")
    pending.seal(pending.prefix + ".index")
    with open(pending.prefix + ".index", "ab") as f:
        f.write(b" and longer")
    ref = pending.finalize({})
    ckpt.verify_checkpoint(ref.directory)
    manifest = json.load(open(os.path.join(ref.directory, "MANIFEST.json")))
    assert manifest["files"]["model.ckpt-9.index"]["size"] == len(b"short and longer")


def test_garbage_in_model_dir_never_crashes_the_reader(tmp_path):
    model_dir = tmp_path / "m"
    (model_dir / "ckpt-9").mkdir(parents=True)
    (model_dir / "ckpt-8").write_text("a file, not a directory")
    (model_dir / "ckpt-x").mkdir()
    (model_dir / ".tmp-ckpt-10-abc").mkdir()
    assert ckpt.latest_intact_checkpoint(str(model_dir)) is None
    assert ckpt.latest_intact_checkpoint(str(tmp_path / "does-not-exist")) is None


def test_same_step_saved_again_keeps_the_intact_one_and_replaces_a_broken_one(tmp_path, caplog):
    model_dir = str(tmp_path / "m")
    write_fake_checkpoint(model_dir, 3, payload=b"old")
    ref = write_fake_checkpoint(model_dir, 3, payload=b"new!")
    ckpt.verify_checkpoint(ref.directory)
    data = os.path.join(ref.directory, "model.ckpt-3.data-00000-of-00001")
    assert open(data, "rb").read() == b"old" and "Keeping the existing" in caplog.text
    assert listing(model_dir) == ["LATEST", "checkpoint", "ckpt-3"]
    _damage(commit.as_storage(model_dir), 3, "garbage manifest")
    ref = write_fake_checkpoint(model_dir, 3, payload=b"new!")
    ckpt.verify_checkpoint(ref.directory)
    assert open(data, "rb").read() == b"new!"
    assert listing(model_dir) == ["LATEST", "checkpoint", "ckpt-3"]


def test_interrupted_writer_leaves_only_a_temporary_dir(tmp_path):
    model_dir = str(tmp_path / "m")
    write_fake_checkpoint(model_dir, 1)
    pending = commit.PendingCheckpoint(model_dir, 2)
    open(pending.prefix + ".index", "wb").close()
    # The writer "dies" here: no finalize.
    assert ckpt.latest_intact_checkpoint(model_dir).step == 1
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [1]
    # Its writer (this process) is alive, so retention must not touch it.
    assert retention.stale_temporary_dirs(model_dir) == []


def test_stale_temporary_dir_of_a_dead_writer_is_pruned(tmp_path):
    model_dir = str(tmp_path / "m")
    write_fake_checkpoint(model_dir, 1)
    pending = commit.PendingCheckpoint(model_dir, 2)
    record = json.load(open(os.path.join(pending.staging_dir, commit.WRITER)))
    record["pid_start"] = "not-this-process"  # a recycled pid: the writer is dead
    json.dump(record, open(os.path.join(pending.staging_dir, commit.WRITER), "w"))
    live = commit.PendingCheckpoint(model_dir, 3)
    removed = ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=5))
    assert removed == [pending.staging_dir]
    assert os.path.isdir(live.staging_dir) and not os.path.exists(pending.staging_dir)


class _HeldExecutor:
    """Holds submitted work until run_all(), so a test sees the state between."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, *args):
        self.calls.append((fn, args))

    def run_all(self):
        for fn, args in self.calls:
            fn(*args)


def test_background_prune_hides_the_checkpoint_at_once_and_removes_it_later(tmp_path):
    model_dir = str(tmp_path / "m")
    for step in (1, 2):
        write_fake_checkpoint(model_dir, step)
    held = _HeldExecutor()
    removed = ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1), in_background=held)
    assert removed == [f"{model_dir}/ckpt-1"]
    names = listing(model_dir)
    assert "ckpt-1" not in names and [s.step for s in ckpt.list_checkpoints(model_dir)] == [2]
    assert 'ckpt-1/' not in open(os.path.join(model_dir, "checkpoint")).read()
    # Renamed aside, owned by this live process: no other pruner takes it.
    assert [n for n in names if n.startswith(".tmp-ckpt-1-")] and len(held.calls) == 1
    assert retention.stale_temporary_dirs(model_dir) == []
    held.run_all()
    assert listing(model_dir) == ["LATEST", "checkpoint", "ckpt-2"]


@pytest.mark.parametrize("keep_last, expect", [(1, [5]), (2, [4, 5]), (10, [1, 2, 3, 4, 5])])
def test_prune_keeps_last_k(model_dir, keep_last, expect):
    for step in range(1, 6):
        write_fake_checkpoint(model_dir, step)
    ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=keep_last))
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == expect
    state = commit.as_storage(model_dir)
    text = state.read_bytes(state.path("checkpoint")).decode()
    assert text.count("all_model_checkpoint_paths") == len(expect)


def test_prune_never_deletes_newest_intact_even_if_newer_ones_are_broken(tmp_path):
    model_dir = str(tmp_path / "m")
    for step in range(1, 5):
        write_fake_checkpoint(model_dir, step)
    store = commit.as_storage(model_dir)
    _damage(store, 4, "truncated data")
    _damage(store, 3, "missing manifest")
    ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1))
    assert listing(model_dir) == ["LATEST", "checkpoint", "ckpt-2", "ckpt-3", "ckpt-4"]
    assert ckpt.latest_intact_checkpoint(model_dir).step == 2


def test_a_read_error_never_gets_an_intact_checkpoint_deleted_or_replaced(tmp_path, monkeypatch, caplog):
    """A Lustre or NFS hiccup (EIO, a stale handle) while retention or a save of the same step
    checks an older checkpoint: it is skipped, not judged broken and deleted or replaced."""
    model_dir = str(tmp_path / "m")
    for step in range(1, 4):
        write_fake_checkpoint(model_dir, step, payload=b"first")
    real_stat = storage.Storage.stat

    def flaky_stat(self, path):
        if "/ckpt-1/" in path or "/ckpt-3/" in path:
            raise OSError(errno.EIO, "Input/output error", path)
        return real_stat(self, path)

    monkeypatch.setattr(storage.Storage, "stat", flaky_stat)
    commit.forget_verified()
    statuses = {s.step: s for s in ckpt.list_checkpoints(model_dir)}
    assert not statuses[1].intact and "kept until it can be read" in statuses[1].reason
    ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1))
    write_fake_checkpoint(model_dir, 3, payload=b"other")  # a rerun reaching step 3 again
    monkeypatch.setattr(storage.Storage, "stat", real_stat)
    commit.forget_verified()
    assert [s.step for s in ckpt.list_checkpoints(model_dir) if s.intact] == [1, 2, 3]
    data = os.path.join(model_dir, "ckpt-3", "model.ckpt-3.data-00000-of-00001")
    assert open(data, "rb").read() == b"first" and "Keeping the existing" in caplog.text
    # A file that is gone is broken, as before, and retention removes it.
    os.remove(data)
    commit.forget_verified()
    assert "missing" in {s.step: s for s in ckpt.list_checkpoints(model_dir)}[3].reason


def test_keep_every_hours_keeps_one_per_period():
    hour = 3600.0
    statuses = [commit.CheckpointStatus(f"ckpt-{s}", s, True, created=t * hour)
                for s, t in [(1, 0), (2, 0.5), (3, 1.1), (4, 1.5), (5, 2.2), (6, 2.3)]]
    keep, delete = retention.plan(statuses, keep_last=1, keep_every_hours=1.0)
    assert [s.step for s in keep] == [1, 3, 5, 6]
    assert [s.step for s in delete] == [2, 4]


def test_unwritable_model_dir_is_reported_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ckpt.CheckpointError, match="not writable"):
        ckpt.require_writable_model_dir(str(blocker / "model"))
    readonly = tmp_path / "ro"
    readonly.mkdir()
    os.chmod(readonly, 0o555)
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; the read-only mount case "
                    "is covered by the cluster test")
    with pytest.raises(ckpt.CheckpointError, match="not writable"):
        ckpt.require_writable_model_dir(str(readonly))


def test_writable_model_dir_is_created_and_left_clean(tmp_path):
    model_dir = tmp_path / "new" / "model"
    ckpt.require_writable_model_dir(str(model_dir))
    assert model_dir.is_dir() and listing(model_dir) == []


def test_unknown_protocol_is_a_clear_error():
    with pytest.raises(ckpt.CheckpointError, match="Cannot open model_dir"):
        ckpt.latest_intact_checkpoint("nosuchproto://bucket/x")



@pytest.mark.parametrize("age_secs, removed", [(2 * 3600, True), (60, False)])
def test_temporary_dir_with_garbage_writer_record_is_judged_by_age(tmp_path, age_secs, removed):
    model_dir = tmp_path / "m"
    write_fake_checkpoint(str(model_dir), 1)
    leftover = model_dir / ".tmp-ckpt-2-0123456789ab"
    leftover.mkdir()
    (leftover / commit.WRITER).write_text("{garbage")
    old = os.path.getmtime(leftover) - age_secs
    os.utime(leftover, (old, old))
    ckpt.prune(str(model_dir), ckpt.CheckpointPolicy())
    assert leftover.exists() != removed
