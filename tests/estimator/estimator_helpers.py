"""Real train.py task processes for the bwtf.estimator tests.

Lives outside conftest.py so that tests import it by a name no other test
folder uses (several folders have a conftest.py; `from conftest import ...`
would get whichever was imported first).
"""
import json
import os
import socket
import subprocess
import sys

ROLE_VARIABLES = (
    "TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
    "SLURM_STEP_TASKS_PER_NODE", "PBS_NODEFILE", "PBS_JOBID", "PMI_RANK", "PMI_SIZE", "PALS_RANKID",
    "PALS_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "ALPS_APP_PE", "BWTF_PORT_BASE",
    "BWTF_GPUS_PER_NODE", "CUDA_VISIBLE_DEVICES",
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _task_env(tf_config=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    for name in ROLE_VARIABLES:
        env.pop(name, None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return env


def start_train(args, log_path, tf_config=None):
    """Starts one train.py task; its stdout+stderr go to ``log_path``."""
    log = open(log_path, "w", encoding="utf-8")
    return subprocess.Popen([sys.executable, "-m", "bwtf.estimator.train", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=_task_env(tf_config))


def finish(process, log_path, timeout):
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = "timeout"
    with open(log_path, encoding="utf-8") as log:
        return code, log.read()


def run_train(args, tmp_path, name="task", timeout=240):
    log_path = tmp_path / f"{name}.log"
    return finish(start_train(args, log_path), log_path, timeout)


def job_env():
    """The environment of a test's own job script (runner_job.py, sync_snapshot_job.py): quiet
    TensorFlow, unbuffered output, no GPU, and none of the caller's cluster-role variables."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    for name in ROLE_VARIABLES:
        env.pop(name, None)
    return env


def job_events(output):
    """The JSON lines a job script printed, in order."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]
