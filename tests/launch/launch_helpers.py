"""Helpers for the launcher tests: running bwtf-launch and finding leftover processes.

Every process a test starts carries a unique ``BWTF_LAUNCH_TEST_MARK`` in its
environment (children inherit it), so "nothing was left behind" is checked by
scanning /proc for that mark instead of trusting pids. (A module of its own,
not conftest.py, so that ``from launch_helpers import ...`` cannot pick up
another folder's conftest.)
"""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

LAUNCH_TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = LAUNCH_TESTS_DIR.parents[1]


def marked_pids(mark):
    """Pids of live processes whose environment carries ``mark``."""
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and f"BWTF_LAUNCH_TEST_MARK={mark}".encode() in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def wait_until_gone(mark, timeout_secs=20.0):
    """The marked pids still alive after ``timeout_secs`` (empty when all ended)."""
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        left = marked_pids(mark)
        if not left:
            return []
        time.sleep(0.2)
    return marked_pids(mark)


class LaunchRun:
    """A bwtf-launch process started in the background, with its output in a file."""

    def __init__(self, args, tmp_path, env):
        self.log_path = tmp_path / f"launch-{uuid.uuid4().hex[:6]}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bwtf.estimator.launch"] + list(args),
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def output(self):
        return self.log_path.read_text(errors="replace")

    def wait_for_line(self, text, timeout_secs):
        deadline = time.monotonic() + timeout_secs
        while time.monotonic() < deadline:
            if text in self.output():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} did not appear within {timeout_secs}s; output:\n{self.output()[-4000:]}")

    def wait(self, timeout_secs):
        try:
            return self.process.wait(timeout_secs)
        finally:
            self._log.close()

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()


def slurm_job_state(job_id, env):
    """(JobState, Restarts) of a Slurm job, from scontrol."""
    text = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True,
                          text=True, timeout=30).stdout
    state = re.search(r"JobState=(\w+)", text)
    restarts = re.search(r"Restarts=(\d+)", text)
    return (state.group(1) if state else "UNKNOWN"), int(restarts.group(1)) if restarts else 0


def wait_for_job_state(job_id, env, wanted, timeout_secs, on_pending=None):
    """Waits until the job holds one of the ``wanted`` states; returns (state, restarts)."""
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        state, restarts = slurm_job_state(job_id, env)
        if state in wanted:
            # A job requeuing itself shows its run's end state for a moment
            # before it turns PENDING; only a state that holds counts.
            time.sleep(3)
            if slurm_job_state(job_id, env) == (state, restarts):
                return state, restarts
            continue
        if state == "PENDING" and on_pending:
            on_pending()
        time.sleep(1)
    raise AssertionError(f"job {job_id} still {state} after {timeout_secs}s, expected one of {wanted}")


def install_mpiexec_reason():
    """None once mpiexec exists (installing Debian's openmpi-bin if needed), else why not."""
    if shutil.which("mpiexec"):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "mpiexec is not installed and this user cannot apt-get install openmpi-bin"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "openmpi-bin"]):
        if subprocess.run(command, env=env, capture_output=True, timeout=600).returncode != 0:
            return f"'{' '.join(command)}' failed; install an MPI (openmpi-bin or mpich) to run this test"
    return None
