"""bwtf-train on real checkpoints gone wrong: one verified reader decides.

Each test runs the real training program (one process, synthetic data) twice
on one model_dir, with the damage a crash or a bad disk leaves in between,
and asserts what a user would notice: the step it resumes from, the step it
ends at, and which committed checkpoints survived.
"""
import collections
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from bwtf import ckpt

_FLAGS = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
          "--batch_size=4", "--log_every_steps=1", "--eval_steps=1", "--distribution=none",
          "--train_steps=6", "--save_checkpoints_steps=2", "--keep_checkpoints=10"]
_HARNESS = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "crash_consistency.py")
_ROLE_VARIABLES = ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID", "PBS_NODEFILE", "PBS_JOBID",
                   "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID", "ALPS_APP_PE")


def _train(model_dir, *extra, wrap=(), **env):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **env)
    for name in _ROLE_VARIABLES:
        full_env.pop(name, None)
    run = subprocess.run([*wrap, sys.executable, "-m", "bwtf.estimator.train", *_FLAGS,
                          f"--model_dir={model_dir}", *extra], capture_output=True, text=True,
                         timeout=600, env=full_env, check=False)
    return run.returncode, run.stdout + run.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["train_corrupt_newest", "train_pointer_crash"])
def test_restarts_after_damage_go_through_the_verified_reader(scenario):
    """The harness's bwtf-train scenarios (scripts/crash_consistency.py says what
    each asserts): a corrupt newest at the step limit resumes from the newest
    intact and trains to --train_steps; a kill between the two pointer writes
    resumes from that checkpoint and never replaces it."""
    run = subprocess.run([sys.executable, _HARNESS, f"--scenario={scenario}", "--trials=1",
                          "--json"], capture_output=True, text=True, timeout=880, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1])["trials"] == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_planted_links_in_a_run_folder_never_lead_training_outside_it(tmp_path):
    model_dir = tmp_path / "run"
    code, log = _train(str(model_dir), "--train_steps=4")
    assert code == 0, log[-3000:]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_text("keep me")
    os.remove(model_dir / "ckpt-2" / ".writer.json")
    os.symlink(victim, model_dir / "ckpt-2" / ".writer.json")
    os.symlink(victim, model_dir / "ckpt-4" / ".writer.json.tmp")
    os.symlink(outside, model_dir / "ckpt-1")
    code, log = _train(str(model_dir), "--train_steps=8", "--keep_checkpoints=1")
    assert code == 0, log[-3000:]
    assert victim.read_text() == "precious"
    assert sorted(os.listdir(outside)) == ["data"] and (outside / "data").read_text() == "keep me"
    assert os.path.islink(model_dir / "ckpt-1")
    assert [s.step for s in ckpt.list_checkpoints(str(model_dir)) if s.intact] == [8]


_READ = re.compile(r"^\d+ +(?:read|pread64|readv|preadv)\(\d+<([^>]+)>.*\) += (\d+)$")
# bwtf.ckpt checksums a local file through a mapping of all of it: one map is one read of its length.
_MAP = re.compile(r"^\d+ +mmap\([^,]+, (\d+), [^,]+, [^,]+, \d+<([^>]+)>, 0\) += 0x[0-9a-f]+$")


def _bytes_read(strace_log, model_dir):
    """{file below model_dir: bytes read from it}, by every process strace followed."""
    totals = collections.Counter()
    with open(strace_log, encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _READ.match(line.strip())
            path, size = (match.group(1), match.group(2)) if match else (None, 0)
            mapped = _MAP.match(line.strip())
            if mapped:
                path, size = mapped.group(2), mapped.group(1)
            if path and path.startswith(model_dir + os.sep):
                totals[os.path.relpath(path, model_dir)] += int(size)
    return totals


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("strace") is None, reason="counts the kernel's reads with strace")
def test_a_restarting_chief_reads_each_checkpoint_once_to_verify_it(tmp_path):
    """Every read syscall and file mapping of the restarting process (TensorFlow's C++
    included) is counted by strace: the checkpoint it resumes from is read twice in all (one
    verification, one RestoreV2), and a newer corrupt one once (its failed check
    is remembered, not repeated by every reader that asks)."""
    model_dir = str(tmp_path / "run")
    code, log = _train(model_dir, "--train_steps=8", "--save_checkpoints_steps=4")
    assert code == 0, log[-3000:]
    data = [n for n in os.listdir(os.path.join(model_dir, "ckpt-8")) if ".data-" in n]
    with open(os.path.join(model_dir, "ckpt-8", data[0]), "r+b") as f:  # same size, other bytes
        byte = f.read(1)
        f.seek(0)
        f.write(bytes([byte[0] ^ 0xFF]))
    trace = str(tmp_path / "strace.log")
    code, log = _train(model_dir, "--train_steps=6", "--save_checkpoints_steps=4",
                       wrap=["strace", "-f", "-qq", "-y", "-s", "0", "-o", trace,
                             "-e", "trace=read,pread64,readv,preadv,mmap"])
    assert code == 0, log[-3000:]
    assert "ckpt-4/model.ckpt-4 (step 4)" in log and log.count("Skipping checkpoint") >= 1
    read = _bytes_read(trace, os.path.realpath(model_dir))
    for step, reads in ((4, 2), (8, 1)):
        directory = os.path.join(model_dir, f"ckpt-{step}")
        for name in os.listdir(directory):
            if ".data-" in name:
                size = os.path.getsize(os.path.join(directory, name))
                assert read[f"ckpt-{step}/{name}"] == reads * size, (step, name, size, read)
