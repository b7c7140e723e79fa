"""Bad cluster input gets a one-line error at start, not a hang: what a task started by a
scheduler (or by hand) sees when its environment is wrong.

The checks live in bwtf.estimator.cluster.roles and training.task; these tests run the
real programs the way the batch scripts do (``bwtf-launch --task``) and assert
the exit status and the message.
"""
import os
import subprocess
import sys

import pytest

from launch_helpers import REPO_ROOT

_SLURM_STEP = {"SLURM_JOB_ID": "4711", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2",
               "SLURM_STEP_NODELIST": "localhost", "SLURM_STEP_TASKS_PER_NODE": "2",
               "SLURM_NTASKS": "2", "SLURM_NODELIST": "localhost"}
_SCHEDULER_VARIABLES = ("TF_CONFIG", "PBS_NODEFILE", "PBS_JOBID", "PMI_RANK", "OMPI_COMM_WORLD_RANK")


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in _SCHEDULER_VARIABLES}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", **extra)
    return env


def _task(env, flags):
    return subprocess.run([sys.executable, "-m", "bwtf.estimator.launch", "--task", "--"] + flags,
                          env=env, capture_output=True, text=True, timeout=120)


_TRAIN_FLAGS = ["--model=small_cnn", "--use_synthetic_data", "--image_size=32", "--train_steps=1"]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("env_change, flags, message", [
    ({"TF_CONFIG": '{"cluster": {"chief": ["localhost:2222"]}, "task": '},
     [], "TF_CONFIG is not valid JSON"),
    ({"TF_CONFIG": '{"cluster": {"chief": ["localhost"]}, "task": {"type": "chief", "index": 0}}'},
     [], "expected 'host:port'"),
    (_SLURM_STEP, ["--num_ps=2"], "has 2 task(s) but --num_ps=2"),
    ({}, ["--cluster=slurm"], "Slurm cluster requested but"),
    ({}, ["--cluster=pbs"], "PBS cluster requested but"),
], ids=["truncated-tf-config", "tf-config-without-port", "more-ps-than-slurm-tasks",
        "forced-slurm-without-variables", "forced-pbs-without-variables"])
def test_bad_cluster_input_is_a_one_line_error(env_change, flags, message, tmp_path):
    result = _task(_clean_env(**env_change), _TRAIN_FLAGS + [f"--model_dir={tmp_path / 'model'}"] + flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists() or not any((tmp_path / "model").iterdir())


def test_sbatch_script_refuses_too_few_tasks(tmp_path):
    env = _clean_env(SLURM_JOB_ID="4711", SLURM_NTASKS="2", SLURM_JOB_NODELIST="localhost",
                     BWTF_PYTHON=sys.executable, BWTF_LOG_DIR=str(tmp_path / "logs"))
    result = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "train.sbatch"), "--model=small_cnn"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "the job has 2 task(s); a training cluster needs at" in result.stderr
