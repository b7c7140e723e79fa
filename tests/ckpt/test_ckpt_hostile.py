"""Hostile and broken run folders: nothing written or read outside model_dir,
a bad manifest is one skipped checkpoint (never a traceback, never blocking
the others), names from manifests never leave their directory.

Each test plants its own hostile input in a real directory and runs the real
code paths: the saver's background prune, the reader, and ``bwtf-ckpt`` as a
subprocess (exit status and stderr as a user sees them).
"""
import json
import os
import subprocess
import sys

import pytest

from ckpt_cluster import release_ownership

from bwtf import ckpt
from bwtf.ckpt import commit
from bwtf.ckpt import retention


def _fake(model_dir, step, payload=b"x" * 1000):
    pending = commit.PendingCheckpoint(model_dir, step)
    with open(pending.prefix + ".index", "wb") as f:
        f.write(b"index-%d" % step)
    with open(pending.prefix + ".data-00000-of-00001", "wb") as f:
        f.write(payload + b"%d" % step)
    return pending.finalize({"w": {"shape": [10], "dtype": "float32"}})


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", *args],
                          capture_output=True, text=True, timeout=60, check=False)




class _Inline:
    """An executor that runs submitted work at once (the saver's deleter)."""

    def submit(self, fn, *args):
        fn(*args)


def _tree(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), open(os.path.join(d, f), "rb").read())
                  for d, _, files in os.walk(path) for f in files)


def test_planted_links_never_lead_retention_outside_model_dir(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data").write_bytes(b"keep me")
    model_dir = tmp_path / "m"
    for step in (2, 3, 4):
        _fake(str(model_dir), step)
    # ckpt-2's writer record points at the victim; ckpt-1 is a link to a folder.
    os.remove(model_dir / "ckpt-2" / commit.WRITER)
    os.symlink(victim, model_dir / "ckpt-2" / commit.WRITER)
    os.symlink(elsewhere, model_dir / "ckpt-1")
    os.symlink(victim, model_dir / ".tmp-ckpt-7-0123456789ab")
    removed = ckpt.prune(str(model_dir), ckpt.CheckpointPolicy(keep_last=1), in_background=_Inline())
    assert victim.read_bytes() == b"precious"
    assert _tree(elsewhere) == [("data", b"keep me")]
    assert f"{model_dir}/ckpt-2" in removed and f"{model_dir}/ckpt-1" not in removed
    assert os.path.islink(model_dir / "ckpt-1")  # not ours: listed as broken, left alone
    statuses = {s.directory.rsplit("/", 1)[-1]: s for s in ckpt.list_checkpoints(str(model_dir))}
    assert not statuses["ckpt-1"].intact and "symbolic link" in statuses["ckpt-1"].reason
    assert statuses["ckpt-4"].intact


def test_linked_manifest_or_data_file_is_not_read(tmp_path):
    model_dir = tmp_path / "m"
    _fake(str(model_dir), 1)
    _fake(str(model_dir), 2)
    outside = tmp_path / "outside.json"
    os.rename(model_dir / "ckpt-2" / "MANIFEST.json", outside)  # a valid manifest, moved out
    os.symlink(outside, model_dir / "ckpt-2" / "MANIFEST.json")
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 1
    status = ckpt.list_checkpoints(str(model_dir))[-1]
    assert "symbolic link" in status.reason


def _nested(depth):
    return ("[" * depth + "]" * depth).encode()


def _manifest_of(model_dir, step):
    return json.load(open(os.path.join(model_dir, f"ckpt-{step}", "MANIFEST.json")))


_THROUGH_THE_CLI = ("nested 50000 deep", "size is a string", "a file outside the directory")


@pytest.mark.parametrize("name, change, reason", [
    ("nested 50000 deep", lambda m: _nested(50000), "nested too deeply"),
    ("files is a list", lambda m: {**m, "files": list(m["files"])}, "lacks its 'files'"),
    ("file entry is a string", lambda m: {**m, "files": {k: "big" for k in m["files"]}},
     "no integer 'size'"),
    ("size is a string", lambda m: {**m, "files": {k: {**v, "size": str(v["size"])}
                                                   for k, v in m["files"].items()}},
     "no integer 'size'"),
    ("step is a string", lambda m: {**m, "step": "3"}, "lacks its 'files' or 'step'"),
    ("step is a bool", lambda m: {**m, "step": True}, "lacks its 'files' or 'step'"),
    ("created is text", lambda m: {**m, "created": "yesterday"}, "'created' has the wrong type"),
    ("variables is a list", lambda m: {**m, "variables": [1]}, "'variables' has the wrong type"),
    ("prefix escapes", lambda m: {**m, "prefix": "../model.ckpt-3"}, "'prefix'"),
    ("format_version is text", lambda m: {**m, "format_version": "2"}, "format_version '2'"),
    ("a file outside the directory", lambda m: {**m, "files": {
        **m["files"], "../../victim.txt": {"size": 8, "crc32": 0, "crc32c": 0}}},
     "not a plain name"),
    ("an absolute file name", lambda m: {**m, "files": {
        **m["files"], "/etc/passwd": {"size": 1, "crc32": 0, "crc32c": 0}}},
     "not a plain name"),
])
def test_bad_manifest_is_one_skipped_checkpoint_in_reader_and_cli(tmp_path, name, change, reason):
    model_dir = str(tmp_path / "m")
    (tmp_path / "victim.txt").write_bytes(b"precious")
    for step in (1, 2, 3):
        _fake(model_dir, step)
    bad = change(_manifest_of(model_dir, 3))
    with open(os.path.join(model_dir, "ckpt-3", "MANIFEST.json"), "wb") as f:
        f.write(bad if isinstance(bad, bytes) else json.dumps(bad).encode())
    assert ckpt.latest_intact_checkpoint(model_dir).step == 2
    statuses = ckpt.list_checkpoints(model_dir, full=True)
    assert [s.intact for s in statuses] == [True, True, False] and reason in statuses[-1].reason
    release_ownership(model_dir)
    if name not in _THROUGH_THE_CLI:  # the reader is the same; a few CLI runs suffice
        ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1))
        assert [(s.step, s.intact) for s in ckpt.list_checkpoints(model_dir)] == [(2, True), (3, False)]
        return
    for args, status in [(("list", model_dir), 0), (("list", model_dir, "--full"), 0),
                         (("verify", model_dir), 1),
                         (("verify", os.path.join(model_dir, "ckpt-3")), 1),
                         (("inspect", model_dir), 0),
                         (("prune", model_dir, "--keep_last=1"), 0)]:
        run = _cli(*args)
        assert run.returncode == status, (args, run.stderr)
        assert "Traceback" not in run.stderr, (args, run.stderr)
    # Pruning went on past the bad manifest: only the newest intact (2) is kept,
    # the broken newer one is left for inspection.
    assert [(s.step, s.intact) for s in ckpt.list_checkpoints(model_dir)] == [(2, True), (3, False)]
    assert (tmp_path / "victim.txt").read_bytes() == b"precious"


def test_inspect_of_a_bad_checkpoint_is_one_line(tmp_path):
    model_dir = str(tmp_path / "m")
    _fake(model_dir, 1)
    with open(os.path.join(model_dir, "ckpt-1", "MANIFEST.json"), "wb") as f:
        f.write(_nested(50000))
    run = _cli("inspect", os.path.join(model_dir, "ckpt-1"))
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1
    assert "nested too deeply" in run.stderr


def test_verify_full_never_counts_files_outside_the_checkpoint(tmp_path):
    model_dir = str(tmp_path / "m")
    _fake(model_dir, 1)
    outside = tmp_path / "m" / "stolen.data-00000-of-00001"
    outside.write_bytes(b"outside")
    manifest = _manifest_of(model_dir, 1)
    manifest["files"]["../stolen.data-00000-of-00001"] = {
        "size": 7, manifest["checksum"]: commit.storage_lib.local_checksum(str(outside),
                                                                           manifest["checksum"])}
    json.dump(manifest, open(os.path.join(model_dir, "ckpt-1", "MANIFEST.json"), "w"))
    release_ownership(model_dir)
    run = _cli("verify", os.path.join(model_dir, "ckpt-1"), "--json")
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert not report["intact"] and "not a plain name" in report["checkpoints"][0]["reason"]


def test_non_canonical_names_are_listed_as_they_are_and_never_deleted(tmp_path):
    model_dir = str(tmp_path / "m")
    _fake(model_dir, 9)
    _fake(model_dir, 10)
    os.rename(os.path.join(model_dir, "ckpt-9"), os.path.join(model_dir, "ckpt-009"))
    statuses = ckpt.list_checkpoints(model_dir)
    assert [s.directory.rsplit("/", 1)[-1] for s in statuses] == ["ckpt-009", "ckpt-10"]
    assert not statuses[0].intact and "expected ckpt-9" in statuses[0].reason
    release_ownership(model_dir)
    listed = _cli("list", model_dir)
    assert "ckpt-009" in listed.stdout and "/ckpt-9 " not in listed.stdout
    assert _cli("prune", model_dir, "--keep_last=1").returncode == 0
    assert os.path.isdir(os.path.join(model_dir, "ckpt-009"))


def test_prune_ignores_checkpoints_that_vanish_under_it(tmp_path, monkeypatch):
    """Another pruner deletes the same checkpoint first: no exception escapes."""
    model_dir = str(tmp_path / "m")
    for step in (1, 2, 3):
        _fake(model_dir, step)
    real_plan = retention.plan

    def plan_then_race(statuses, keep_last, keep_every_hours=None):
        keep, delete = real_plan(statuses, keep_last, keep_every_hours)
        for status in delete:  # the other pruner wins every race
            commit.storage_lib.Storage(model_dir).remove_tree(status.directory)
        return keep, delete

    monkeypatch.setattr(retention, "plan", plan_then_race)
    ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1), in_background=_Inline())
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [3]
    assert commit.read_pointer(model_dir) == 3
