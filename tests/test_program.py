"""The shared primitives: the program shell's exit codes and help, and write_atomically.

The shell is exercised through ``bwtf-ckpt`` (``python -m bwtf.ckpt``), the one console
script that starts without TensorFlow, so these stay fast; every other program runs
through the same ``bwtf.program.run``.
"""
import os
import stat
import subprocess
import sys

import pytest

import bwtf


def _ckpt(*args):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, code, message", [
    (["--help"], 0, None),
    (["-h"], 0, None),
    (["list"], 2, "bwtf-ckpt: error: expected a command and a path"),
    (["list", "/x", "--no_such_flag"], 2, "bwtf-ckpt: error: Unknown command line flag 'no_such_flag'"),
    (["prune", "/x", "--keep_last=many"], 2, "bwtf-ckpt: error: flag --keep_last=many"),
    (["list", "/nonexistent-dir"], 2, "bwtf-ckpt: error: /nonexistent-dir does not exist"),
], ids=["help", "h", "missing-path", "unknown-flag", "bad-value", "no-such-dir"])
def test_the_shell_answers_with_one_line_and_the_documented_code(args, code, message):
    result = _ckpt(*args)
    assert result.returncode == code, result.stderr
    if message is None:
        assert result.stdout.startswith("usage: bwtf-ckpt {list,verify,inspect,prune} PATH")
        assert "Exit codes:" in result.stdout and "  --keep_last" in result.stdout
        assert result.stderr == ""
    else:
        assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
        assert result.stderr.startswith(message), result.stderr


def test_exit_codes_are_defined_once_and_distinct():
    codes = [bwtf.EXIT_OK, bwtf.EXIT_FAILED, bwtf.EXIT_USAGE, bwtf.EXIT_CHIEF_VANISHED, bwtf.EXIT_FENCED,
             bwtf.EXIT_REQUEUE]
    assert codes == [0, 1, 2, 70, 73, 75]
    assert bwtf.FencedWriterError("x").exit_code == bwtf.EXIT_FENCED
    from bwtf import ckpt
    from bwtf.estimator.cluster import ps_lifecycle
    assert ckpt.EXIT_REQUEUE == bwtf.EXIT_REQUEUE and ps_lifecycle.EXIT_CHIEF_VANISHED == bwtf.EXIT_CHIEF_VANISHED
    assert issubclass(ckpt.CheckpointError, bwtf.UserError)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_write_atomically_keeps_the_umask_and_leaves_nothing_else(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        path = bwtf.write_atomically(str(tmp_path / "eval.json"), '{"a": 1}\n')
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
    assert (tmp_path / "eval.json").read_text() == '{"a": 1}\n'


def test_write_atomically_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "out.json").symlink_to(victim)
    bwtf.write_atomically(str(tmp_path / "out.json"), b"new")
    assert victim.read_text() == "keep me"
    assert not (tmp_path / "out.json").is_symlink() and (tmp_path / "out.json").read_bytes() == b"new"


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "LATEST"
    path.write_text("old")

    def crash():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bwtf.write_atomically(str(path), "new contents", on_partial=crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]


@pytest.mark.parametrize("module, own, ignored", [
    ("bwtf.estimator.evaluate", ["--split", "--output_json", "--model_dir", "--model"],
     ["--momentum", "--warmup_steps", "--eval_split", "--base_lr", "--precision", "to train"]),
    ("bwtf.estimator.export", ["--export_dir", "--model_dir", "--labels_file"],
     ["--momentum", "--warmup_steps", "--train_steps", "--batch_size", "to train"]),
    ("bwtf.estimator.launch", ["--num_ps", "everything after -- goes unchanged"], ["--keep_checkpoints"]),
])
def test_help_shows_the_programs_own_flags_and_no_others(module, own, ignored):
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Exit codes:" in result.stdout
    for text in own:
        assert text in result.stdout, text
    for text in ignored:
        assert text not in result.stdout, text
