"""Fencing and pointers: one writer per model_dir, pointers rebuilt from the checkpoints.

Two writers are two Ownership claims on one real directory (the multi-process
case, two chiefs of a real cluster, is a scenario of scripts/crash_consistency.py).
"""
import json
import os

import pytest

from bwtf import ckpt
from bwtf.ckpt import commit
from bwtf.ckpt import fence


@pytest.fixture(autouse=True)
def _fresh_claims():
    fence.release_all()
    yield
    fence.release_all()


def _fake(model_dir, step, ownership=None):
    pending = commit.PendingCheckpoint(model_dir, step, ownership=ownership)
    with open(pending.prefix + ".index", "wb") as f:
        f.write(b"index-%d" % step)
    with open(pending.prefix + ".data-00000-of-00001", "wb") as f:
        f.write(b"y" * 100 + b"%d" % step)
    try:
        return pending.finalize({"w": {"shape": [1], "dtype": "float32"}})
    except BaseException:
        pending.abort()
        raise


def _second_writer(model_dir):
    """A newer chief on the same model_dir (another process, in effect)."""
    fence.release_all()
    return fence.acquire(model_dir)


def test_superseded_writer_commits_and_deletes_nothing(tmp_path):
    model_dir = str(tmp_path / "m")
    old = fence.acquire(model_dir)
    for step in (1, 2, 3):
        _fake(model_dir, step, old)
    new = _second_writer(model_dir)
    assert new.generation == old.generation + 1
    with pytest.raises(ckpt.FencedError, match="taken over by generation 2") as raised:
        _fake(model_dir, 4, old)
    assert raised.value.exit_code == ckpt.EXIT_FENCED == 73
    with pytest.raises(ckpt.FencedError):
        ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1), ownership=old)
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [1, 2, 3]
    assert not [n for n in os.listdir(model_dir) if n.startswith(".tmp-ckpt")]
    _fake(model_dir, 4, new)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 4


def test_two_chiefs_starting_at_once_one_wins(tmp_path):
    model_dir = str(tmp_path / "m")
    os.makedirs(model_dir)
    # Both read generation 0 and write generation 1: the higher token owns.
    claims = []
    for token in ("aaaaaaaaaaaa", "bbbbbbbbbbbb"):
        with open(os.path.join(model_dir, f".bwtf-owner-1-{token}.json"), "w") as f:
            json.dump({"pid": os.getpid()}, f)
        claims.append(fence.Ownership(commit.as_storage(model_dir), 1, token))
    claims[1].check()
    with pytest.raises(ckpt.FencedError):
        claims[0].check()


def test_an_intact_checkpoint_of_the_same_step_is_never_replaced(tmp_path):
    model_dir = str(tmp_path / "m")
    ref = _fake(model_dir, 20)
    manifest = open(os.path.join(ref.directory, "MANIFEST.json"), "rb").read()
    _fake(model_dir, 20)
    assert open(os.path.join(ref.directory, "MANIFEST.json"), "rb").read() == manifest


@pytest.mark.parametrize("damage", ["LATEST only", "state file only", "both stale", "both missing",
                                    "newest corrupt", "garbage pointers"])
def test_repair_points_both_pointers_at_the_newest_intact(tmp_path, damage):
    """A kill between the two pointer writes, or after the rename, or a newest
    checkpoint that went bad: the chief's repair makes LATEST, TF's state file
    and tf.train.latest_checkpoint agree with the verified reader."""
    tf = pytest.importorskip("tensorflow")
    model_dir = str(tmp_path / "m")
    for step in (20, 40):
        _fake(model_dir, step)
    store = commit.as_storage(model_dir)
    latest, state = os.path.join(model_dir, "LATEST"), os.path.join(model_dir, "checkpoint")
    if damage in ("LATEST only", "both stale"):
        commit.update_pointers(store, 20, crash_points=False)
        if damage == "LATEST only":
            open(state, "w").write('model_checkpoint_path: "ckpt-40/model.ckpt-40"\n')
    if damage == "state file only":
        open(state, "w").write('model_checkpoint_path: "ckpt-20/model.ckpt-20"\n')
    if damage == "both missing":
        os.remove(latest)
        os.remove(state)
    if damage == "garbage pointers":
        open(latest, "w").write("[" * 5000)
        open(state, "w").write("\x00garbage")
    want = 40
    if damage == "newest corrupt":
        open(os.path.join(model_dir, "ckpt-40", "MANIFEST.json"), "w").write("{broken")
        want = 20
    ref = ckpt.repair_pointers(model_dir)
    assert ref.step == want
    assert commit.read_pointer(model_dir) == want
    assert tf.train.latest_checkpoint(model_dir) == os.path.join(model_dir, f"ckpt-{want}",
                                                                 f"model.ckpt-{want}")


def test_repair_without_any_intact_checkpoint_removes_the_pointers(tmp_path):
    model_dir = str(tmp_path / "m")
    _fake(model_dir, 5)
    open(os.path.join(model_dir, "ckpt-5", "MANIFEST.json"), "w").write("{")
    assert ckpt.repair_pointers(model_dir) is None
    assert not os.path.exists(os.path.join(model_dir, "LATEST"))
    assert not os.path.exists(os.path.join(model_dir, "checkpoint"))


def test_take_ownership_fences_the_old_writer_and_repairs(tmp_path):
    model_dir = str(tmp_path / "m")
    old = fence.acquire(model_dir)
    _fake(model_dir, 1, old)
    os.remove(os.path.join(model_dir, "LATEST"))
    fence.release_all()
    assert ckpt.take_ownership(model_dir).step == 1
    assert commit.read_pointer(model_dir) == 1
    with pytest.raises(ckpt.FencedError):
        old.check()


def test_bwtf_ckpt_prune_refuses_while_the_owner_runs(tmp_path):
    model_dir = str(tmp_path / "m")
    for step in (1, 2):
        _fake(model_dir, step)
    fence.release_all()  # this process is now "another program" that did not write
    with pytest.raises(ckpt.CheckpointError, match="owned by a running writer"):
        ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1))
    assert ckpt.prune(model_dir, ckpt.CheckpointPolicy(keep_last=1), dry_run=True) == [
        f"{model_dir}/ckpt-1"]
