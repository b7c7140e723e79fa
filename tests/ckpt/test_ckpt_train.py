"""bwtf-train on real checkpoints gone wrong: one verified reader decides.

Each test runs the real training program (one process, synthetic data) twice
on one model_dir, with the damage a crash or a bad disk leaves in between,
and asserts what a user would notice: the step it resumes from, the step it
ends at, and which committed checkpoints survived.
"""
import json
import os
import subprocess
import sys

import pytest

from bwtf import ckpt

_FLAGS = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
          "--batch_size=4", "--log_every_steps=1", "--eval_steps=1", "--distribution=none",
          "--train_steps=6", "--save_checkpoints_steps=2", "--keep_checkpoints=10"]
_ROLE_VARIABLES = ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID", "PBS_NODEFILE", "PBS_JOBID",
                   "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID", "ALPS_APP_PE")


def _train(model_dir, *extra, **env):
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **env)
    for name in _ROLE_VARIABLES:
        full_env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "bwtf.estimator.train", *_FLAGS,
                          f"--model_dir={model_dir}", *extra], capture_output=True, text=True,
                         timeout=300, env=full_env, check=False)
    return run.returncode, run.stdout + run.stderr


def _manifest(model_dir, step):
    with open(os.path.join(model_dir, f"ckpt-{step}", "MANIFEST.json"), "rb") as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_corrupt_newest_at_the_step_limit_resumes_and_trains_to_the_limit(tmp_path):
    model_dir = str(tmp_path / "run")
    code, log = _train(model_dir)
    assert code == 0, log[-3000:]
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [2, 4, 6]
    with open(os.path.join(model_dir, "ckpt-6", "MANIFEST.json"), "w") as f:
        f.write("{garbled")
    kept = _manifest(model_dir, 4)
    code, log = _train(model_dir)
    assert code == 0, log[-3000:]
    assert "Skipping training since max_steps has already saved" not in log
    assert "Skipping checkpoint" in log and "ckpt-6" in log
    assert "resuming from" in log and "ckpt-4" in log
    statuses = ckpt.list_checkpoints(model_dir, full=True)
    assert [(s.step, s.intact) for s in statuses] == [(2, True), (4, True), (6, True)]
    assert _manifest(model_dir, 4) == kept
    assert json.loads(_manifest(model_dir, 6))["step"] == 6


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_between_the_pointer_writes_resumes_from_that_checkpoint(tmp_path):
    model_dir = str(tmp_path / "run")
    code, log = _train(model_dir, BWTF_CKPT_FAILPOINT="pointer_written:1")
    assert code == -9, log[-3000:]
    first = _manifest(model_dir, 2)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 2
    code, log = _train(model_dir)
    assert code == 0, log[-3000:]
    assert "resuming from" in log and "ckpt-2/model.ckpt-2 (step 2)" in log
    assert "Restored " in log and "step = 3" in log and "step = 1," not in log
    # Not replaced by a checkpoint of a new trajectory started from step 0.
    assert _manifest(model_dir, 2) == first
    assert [s.step for s in ckpt.list_checkpoints(model_dir)] == [2, 4, 6]


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
