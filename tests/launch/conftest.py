"""Fixtures for the launcher tests (helpers in launch_helpers.py and virtual_cluster.py).

``virtual_cluster`` is three virtual nodes (virtual_cluster.sh) where node3
does not see the shared "Lustre" directory; ``virtual_slurm`` is the same with
slurmctld and one slurmd per node running, under the machine-wide Slurm lock.
``slurm_env`` is a one-node Slurm on localhost (slurm_localhost.sh), under the
same lock: the environment in which sbatch and scontrol reach it.
Both are per test module, and torn down also when a test or the set-up fails.
"""
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from launch_helpers import LAUNCH_TESTS_DIR, LaunchRun, marked_pids
import virtual_cluster as virtual


@pytest.fixture
def launch_mark():
    return uuid.uuid4().hex


@pytest.fixture
def launch_env(launch_mark):
    env = dict(os.environ)
    env["BWTF_LAUNCH_TEST_MARK"] = launch_mark
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LAUNCH_TESTS_DIR), env.get("PYTHONPATH")]))
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("TF_CONFIG", None)
    return env


@pytest.fixture
def start_launch(tmp_path, launch_env, launch_mark):
    """start_launch(args) -> LaunchRun; kills whatever is left at teardown."""
    runs = []

    def start(args, env=None):
        run = LaunchRun(args, tmp_path, env or launch_env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()
    for pid in marked_pids(launch_mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _virtual_cluster(tmp_path_factory, with_slurm):
    reason = virtual.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = virtual.VirtualCluster(tmp_path_factory.mktemp("vc"), nodes=3, local_nodes=("node3",))
    try:
        cluster.up()
        if with_slurm:
            cluster.slurm()
        cluster.env.update(BWTF_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
        cluster.env.pop("TF_CONFIG", None)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def virtual_cluster(tmp_path_factory):
    """Three virtual nodes; node3 has a node-local directory where the others share "Lustre"."""
    yield from _virtual_cluster(tmp_path_factory, with_slurm=False)


@pytest.fixture(scope="module")
def virtual_slurm(tmp_path_factory):
    """virtual_cluster with Slurm on it; ``.env`` holds SLURM_CONF for sbatch/scontrol."""
    with virtual.slurm_lock():
        yield from _virtual_cluster(tmp_path_factory, with_slurm=True)


def _slurm_unavailable_reason():
    if os.geteuid() != 0:
        return "the localhost Slurm needs root (it runs slurmctld/slurmd and may apt-get install them)"
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "slurm-wlm is not installed and there is no apt-get to install it"
    return None


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """The environment in which sbatch/scontrol reach the localhost Slurm (up for the module)."""
    reason = _slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    script = str(LAUNCH_TESTS_DIR / "slurm_localhost.sh")
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"), BWTF_PYTHON=sys.executable,
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    with virtual.slurm_lock():
        up = subprocess.run([script, "up", str(state)], capture_output=True, text=True, timeout=600)
        try:
            assert up.returncode == 0, f"localhost Slurm did not start:\n{up.stdout}\n{up.stderr}"
            yield env
        finally:
            subprocess.run([script, "down", str(state)], capture_output=True, timeout=120)
