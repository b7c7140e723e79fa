"""Fixtures for the launcher tests (helpers in launch_helpers.py)."""
import os
import signal
import uuid

import pytest

from launch_helpers import LAUNCH_TESTS_DIR, LaunchRun, marked_pids


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
