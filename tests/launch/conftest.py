"""Fixtures for the launcher tests (helpers in launch_helpers.py and virtual_cluster.py).

``virtual_cluster`` is three virtual nodes (virtual_cluster.sh) where node3
does not see the shared "Lustre" directory; ``virtual_slurm`` is the same with
slurmctld and one slurmd per node running, under the machine-wide Slurm lock.
Both are per test module, and torn down also when a test or the set-up fails.
"""
import os
import signal
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
