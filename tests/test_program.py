"""The shared primitives: the program shell's exit codes and help, and write_atomically.

The shell is exercised through ``bwtf-ckpt`` (``python -m bwtf.ckpt``), the one console
script that starts without TensorFlow, so these stay fast; every other program runs
through the same ``bwtf.program.run``.
"""
import os
import re
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


def test_a_checkpoint_warning_reaches_the_console_in_its_one_line_format(tmp_path):
    """ckpt logs through absl like the rest of bwtf: same handler, same filter, same format."""
    from bwtf.ckpt import commit
    for step in (1, 2):
        pending = commit.PendingCheckpoint(str(tmp_path), step)
        with open(pending.prefix + ".index", "wb") as f:
            f.write(b"index")
        with open(pending.prefix + ".data-00000-of-00001", "wb") as f:
            f.write(b"d" * 100)
        pending.finalize({"w": {"shape": [1], "dtype": "float32"}})
    with open(tmp_path / "ckpt-2" / "model.ckpt-2.data-00000-of-00001", "ab") as f:
        f.write(b"x")
    result = _ckpt("inspect", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d\d:\d\d:\d\d warning: Skipping checkpoint \S+/ckpt-2: \S+ has 101 bytes, "
                        r"the manifest says 100 \(truncated\?\)\n", result.stderr), result.stderr
    assert f"checkpoint {tmp_path}/ckpt-1" in result.stdout


def test_bwtf_logs_through_one_stack():
    """No module of bwtf's own sets up a stdlib logger: absl.logging is the one stack."""
    root = os.path.dirname(bwtf.__file__)
    offenders = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("tests", ".venv", "scripts") and not d.startswith(".")]
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and path != os.path.join(root, "program.py"):
                with open(path, encoding="utf-8") as f:
                    if "logging.getLogger(" in f.read():
                        offenders.append(os.path.relpath(path, root))
    assert offenders == []


def _planted(tmp_path):
    """A run folder ``run`` and, outside it, a file and a folder a planted link may point at."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = tmp_path / "run"
    run.mkdir()
    return run, victim, elsewhere


def _outside_untouched(tmp_path, victim, elsewhere):
    assert victim.read_text() == "keep me"
    assert list(elsewhere.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "run", "victim.txt"]


def _write_directly(run, name):
    bwtf.write_atomically(str(run / name), b"new", root=str(run))


def _write_through_storage(run, name):
    from bwtf.ckpt import storage
    storage.Storage(str(run)).write_atomic(str(run / name), b"new")


def _write_pointers(run, name):
    from bwtf.ckpt import commit
    assert name in (commit.POINTER, commit.STATE_FILE)
    commit.update_pointers(str(run), 3, crash_points=False)


def _write_run_record(run, name):
    from bwtf.ckpt import run_record
    assert name == run_record.RECORD_FILE
    run_record.write_record(str(run), {"model": "resnet50"})


def _write_batch_status(run, name):
    assert name == "task-0.status"
    code = ("from bwtf.estimator.cluster import batch_task; import sys; "
            "batch_task._run_and_record([sys.executable, '-c', 'pass'], sys.argv[1], None)")
    result = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, SLURM_PROCID="0"))
    assert result.returncode == 0, result.stderr[-2000:]


# Every caller of the one atomic write that has a fixed name (eval.json and the
# report are in tests/eval/test_eval_report.py). A link planted at the file is
# replaced by a plain file, never written through.
_FILE_CALLERS = [
    (_write_directly, "eval.json"),
    (_write_through_storage, "LATEST"),
    (_write_pointers, "LATEST"),
    (_write_pointers, "checkpoint"),
    (_write_run_record, "run.json"),
    (_write_batch_status, "task-0.status"),
]


@pytest.mark.parametrize("write, name", _FILE_CALLERS,
                         ids=[f"{w.__name__[7:]}-{n}" for w, n in _FILE_CALLERS])
def test_a_link_planted_at_the_file_is_replaced_never_written_through(tmp_path, write, name):
    run, victim, elsewhere = _planted(tmp_path)
    (run / name).symlink_to(victim)
    write(run, name)
    _outside_untouched(tmp_path, victim, elsewhere)
    assert not (run / name).is_symlink() and (run / name).read_text().strip()
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("write, error", [
    (_write_directly, bwtf.LinkRefusedError),
    (_write_through_storage, "ckpt"),
], ids=["write_atomically", "storage"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-folder", "dangling"])
def test_a_linked_folder_below_the_run_folder_is_refused(tmp_path, write, error, dangling):
    from bwtf.ckpt import storage
    run, victim, elsewhere = _planted(tmp_path)
    (run / "ckpt-5").symlink_to(elsewhere if not dangling else tmp_path / "nowhere")
    expected = storage.LinkRefusedError if error == "ckpt" else error
    with pytest.raises(expected, match="symbolic link") as raised:
        write(run, "ckpt-5/COMMITTED")
    assert isinstance(raised.value, bwtf.UserError)
    _outside_untouched(tmp_path, victim, elsewhere)
    assert sorted(p.name for p in run.iterdir()) == ["ckpt-5"]


def test_a_link_swapped_in_for_a_folder_is_refused_at_any_depth(tmp_path):
    run, victim, elsewhere = _planted(tmp_path)
    (run / "a" / "b").mkdir(parents=True)
    bwtf.write_atomically(str(run / "a" / "b" / "x"), "1", root=str(run))
    os.rename(run / "a" / "b", run / "a" / "old")
    (run / "a" / "b").symlink_to(elsewhere)
    with pytest.raises(bwtf.LinkRefusedError, match=r"\(b\)"):
        bwtf.write_atomically(str(run / "a" / "b" / "x"), "2", root=str(run))
    with pytest.raises(bwtf.LinkRefusedError):
        os.close(bwtf.open_below(str(run), str(run / "a" / "b" / "x"), os.O_RDONLY))
    _outside_untouched(tmp_path, victim, elsewhere)


def test_missing_folders_below_the_run_folder_are_created_with_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        bwtf.write_atomically(str(tmp_path / "run" / "logs" / "a.txt"), "x", root=str(tmp_path / "run"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "logs").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "logs" / "a.txt").st_mode) == 0o640


def test_a_path_outside_the_run_folder_is_refused(tmp_path):
    with pytest.raises(bwtf.LinkRefusedError, match="is not below"):
        bwtf.write_atomically(str(tmp_path / "other" / "x"), "x", root=str(tmp_path / "run"))
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("plant", ["logs_folder", "log_file"])
def test_the_log_file_in_model_dir_never_follows_a_planted_link(tmp_path, plant, monkeypatch):
    import logging

    from bwtf import program
    monkeypatch.delenv("BWTF_LOG_DIR", raising=False)
    run, victim, elsewhere = _planted(tmp_path)
    if plant == "logs_folder":
        (run / "logs").symlink_to(elsewhere)
    else:
        (run / "logs").mkdir()
        (run / "logs" / "chief.log").symlink_to(victim)
    handlers = list(logging.getLogger().handlers)
    try:
        assert program.log_to_file_in(str(run), "chief") is None
        logging.getLogger("bwtf-test").warning("a line for the log file")
    finally:
        for handler in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(handler)
    _outside_untouched(tmp_path, victim, elsewhere)


def test_the_log_file_keeps_the_umask_and_appends(tmp_path, monkeypatch):
    import logging

    from bwtf import program
    monkeypatch.delenv("BWTF_LOG_DIR", raising=False)
    handlers = list(logging.getLogger().handlers)
    previous = os.umask(0o002)
    try:
        for _ in range(2):
            path = program.log_to_file_in(str(tmp_path / "run"), "chief")
            logging.getLogger("bwtf-test").warning("a line for the log file")
    finally:
        os.umask(previous)
        for handler in set(logging.getLogger().handlers) - set(handlers):
            handler.flush()
            logging.getLogger().removeHandler(handler)
    assert path == str(tmp_path / "run" / "logs" / "chief.log")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o664
    assert open(path).read().count("a line for the log file") == 3  # two handlers after the second call


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
