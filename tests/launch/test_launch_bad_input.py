"""Bad cluster input gets a one-line error at start, not a hang: what a task started by a
scheduler (or by hand) sees when its environment is wrong.

The checks live in bwtf.estimator.cluster.roles and training.task; these tests run the
real programs the way the batch scripts do (``bwtf-launch --task``) and assert
the exit status and the message.
"""
import os
import signal
import socket
import subprocess
import sys
import time

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


@pytest.fixture
def free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


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


_DEEP_TF_CONFIG = "[" * 50_000 + "]" * 50_000


@pytest.mark.timeout(300)
@pytest.mark.parametrize("env_change, flags, message", [
    ({"TF_CONFIG": _DEEP_TF_CONFIG}, [], "TF_CONFIG is nested too deeply"),
    (dict(_SLURM_STEP, SLURM_PROCID="²"), ["--num_ps=1"], "SLURM_PROCID must be a non-negative integer"),
    ({"BWTF_WALLTIME_END": "3600"}, ["--distribution=none"], "BWTF_WALLTIME_END=3600) ended"),
    ({"TF_CONFIG": '{"cluster": {"chief": ["localhost:%d"], "ps": ["localhost:1"]}, '
                   '"task": {"type": "chief", "index": 0}}'},
     ["--peer_timeout_secs=2"], "no answer from localhost:1 after 2 s"),
], ids=["tf-config-50000-deep", "superscript-rank", "walltime-already-past", "unreachable-ps"])
def test_hostile_cluster_input_is_one_line_and_exit_2(env_change, flags, message, tmp_path, free_port):
    env_change = {k: v.replace("%d", str(free_port)) if "%d" in v else v for k, v in env_change.items()}
    result = _task(_clean_env(**env_change), _TRAIN_FLAGS + [f"--model_dir={tmp_path / 'model'}"] + flags)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "model").glob("ckpt-*"))


@pytest.mark.timeout(300)
def test_a_task_waiting_for_unreachable_peers_ends_on_sigterm(tmp_path, free_port):
    env = _clean_env(TF_CONFIG='{"cluster": {"chief": ["localhost:%d"], "ps": ["localhost:1"]}, '
                               '"task": {"type": "chief", "index": 0}}' % free_port)
    process = subprocess.Popen(
        [sys.executable, "-m", "bwtf.estimator.train", *_TRAIN_FLAGS, f"--model_dir={tmp_path / 'model'}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        seen = ""
        while "task chief:0" not in seen and time.monotonic() < deadline:  # the start summary: now waiting
            seen += process.stdout.readline()
        assert "task chief:0" in seen, seen
        time.sleep(2)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGTERM
