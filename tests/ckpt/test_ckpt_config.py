"""Walltime variables, failpoint variable, CheckpointPolicy and the CLI."""
import json
import os
import subprocess
import sys

import pytest

from ckpt_cluster import release_ownership

from bwtf import ckpt
from bwtf.ckpt import commit
from bwtf.ckpt import walltime


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"BWTF_WALLTIME_END": "1300"}, 300.0),
    ({"SLURM_JOB_END_TIME": "1500"}, 500.0),
    ({"BWTF_WALLTIME_END": "1100", "SLURM_JOB_END_TIME": "1500"}, 100.0),
    ({"PBS_WALLTIME": "3600", "PBS_JOB_START": "900"}, 3500.0),
    ({"PBS_WALLTIME": "60", "PBS_JOBSTART": "1000"}, 60.0),
])
def test_remaining_walltime_from_scheduler_env(environ, expected):
    assert ckpt.remaining_walltime_secs(environ, now=1000.0) == expected


@pytest.mark.parametrize("environ, name", [
    ({"SLURM_JOB_END_TIME": "tomorrow"}, "SLURM_JOB_END_TIME"),
    ({"BWTF_WALLTIME_END": "-5"}, "BWTF_WALLTIME_END"),
    ({"BWTF_WALLTIME_END": "nan"}, "BWTF_WALLTIME_END"),
    ({"PBS_WALLTIME": "01:00:00x"}, "PBS_WALLTIME"),
    ({"PBS_WALLTIME": "60", "PBS_JOB_START": "soon"}, "PBS_JOB_START"),
])
def test_malformed_walltime_env_is_a_clear_error(environ, name):
    with pytest.raises(ckpt.WalltimeEnvError, match=name):
        walltime.remaining_walltime_secs(environ)


@pytest.mark.parametrize("kwargs, problem", [
    ({"save_steps": 0}, "save_steps"),
    ({"save_secs": -1}, "save_secs"),
    ({"keep_last": 0}, "keep_last"),
    ({"keep_every_hours": 0}, "keep_every_hours"),
    ({"max_group_bytes": 0}, "max_group_bytes"),
    ({"walltime_margin_secs": -1}, "walltime_margin_secs"),
])
def test_policy_rejects_bad_values(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        ckpt.CheckpointPolicy(**kwargs)


def test_exit_requeue_is_ex_tempfail():
    assert ckpt.EXIT_REQUEUE == 75


@pytest.mark.parametrize("value", ["nonsense", "merged:0", "merged:x", "merged:-1"])
def test_malformed_failpoint_is_a_clear_error_before_any_write(monkeypatch, tmp_path, value):
    monkeypatch.setenv("BWTF_CKPT_FAILPOINT", value)
    with pytest.raises(ckpt.CheckpointError, match="BWTF_CKPT_FAILPOINT"):
        commit.PendingCheckpoint(str(tmp_path / "m"), 1)
    assert not (tmp_path / "m").exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def _fake(model_dir, step):
    pending = commit.PendingCheckpoint(model_dir, step)
    for suffix in (".index", ".data-00000-of-00001"):
        with open(pending.prefix + suffix, "wb") as f:
            f.write(b"%d" % step * 100)
    pending.finalize({"layer/w": {"shape": [3, 4], "dtype": "float32"}})




def test_cli_list_inspect_prune(tmp_path):
    model_dir = str(tmp_path)
    for step in (10, 20, 30):
        _fake(model_dir, step)
    refused = _cli("prune", model_dir, "--keep_last=1")
    assert refused.returncode == 2 and "owned by a running writer" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    release_ownership(model_dir)
    listed = json.loads(_cli("list", model_dir, "--json").stdout)
    assert [c["step"] for c in listed] == [10, 20, 30] and all(c["intact"] for c in listed)
    inspected = json.loads(_cli("inspect", model_dir, "--json").stdout)
    assert inspected["step"] == 30
    assert inspected["variables"] == {"layer/w": {"shape": [3, 4], "dtype": "float32"}}
    pruned = _cli("prune", model_dir, "--keep_last=1")
    assert pruned.returncode == 0
    assert [c.step for c in ckpt.list_checkpoints(model_dir)] == [30]


def test_cli_verify_fails_when_newest_is_broken(tmp_path):
    model_dir = str(tmp_path)
    _fake(model_dir, 1)
    _fake(model_dir, 2)
    assert _cli("verify", model_dir).returncode == 0
    with open(tmp_path / "ckpt-2" / "model.ckpt-2.data-00000-of-00001", "ab") as f:
        f.write(b"junk")
    result = _cli("verify", model_dir, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["intact"] is False
    assert "manifest says" in report["checkpoints"][-1]["reason"]


@pytest.mark.parametrize("args, message", [
    (["frobnicate", "/x"], "usage"),
    (["list"], "usage"),
    (["inspect", "/nonexistent-dir"], "no intact checkpoint"),
    (["list", "/nonexistent-dir"], "/nonexistent-dir does not exist or is not a directory"),
    (["verify", "/nonexistent-dir"], "/nonexistent-dir does not exist or is not a directory"),
    (["prune", "/nonexistent-dir"], "/nonexistent-dir does not exist or is not a directory"),
    (["prune", "/tmp", "--keep_last=0"], "keep_last"),
])
def test_cli_bad_input_is_one_line_and_nonzero(args, message):
    result = _cli(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_does_not_import_tensorflow(tmp_path):
    code = ("import sys; from bwtf.ckpt import cli; "
            "sys.exit(1 if 'tensorflow' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0
