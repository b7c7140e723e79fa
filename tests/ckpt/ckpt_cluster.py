"""The bwtf.ckpt tests' localhost cluster of real TF processes (conftest.py has the fixtures).

``LocalCluster`` starts ps tasks (optionally in their own mount namespace with
a read-only bind mount of model_dir, so they provably cannot write it) and
runs the chief of ckpt_task.py against them.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time


TASK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ckpt_task.py")
REPO_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def task_env(tf_config=None, **extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    env.update(extra)
    return env


def namespace_isolation_available():
    """True when `unshare -m` plus a read-only bind mount works here (root only)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind /tmp /tmp"],
                           capture_output=True, check=False)
    return probe.returncode == 0


def readonly_prefix(path):
    """Command prefix that runs the rest with ``path`` bind-mounted read-only."""
    script = (f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" '
              '&& exec "$@"')
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]


class LocalCluster:
    """ps tasks on localhost plus a chief run of ckpt_task.py."""

    def __init__(self, num_ps, readonly_dir=None):
        self.ps_ports = [free_port() for _ in range(num_ps)]
        self.chief_port = free_port()
        self.cluster = {"chief": [f"localhost:{self.chief_port}"],
                        "ps": [f"localhost:{p}" for p in self.ps_ports]}
        self.procs = []
        for index in range(num_ps):
            prefix = readonly_prefix(readonly_dir) if readonly_dir else []
            config = {"cluster": self.cluster, "task": {"type": "ps", "index": index}}
            self.procs.append(subprocess.Popen(
                prefix + [sys.executable, TASK, "ps"], env=task_env(config),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def run_chief(self, *args, timeout=180, env=None):
        config = {"cluster": self.cluster, "task": {"type": "chief", "index": 0}}
        return subprocess.run([sys.executable, TASK, "chief", *args],
                              env=task_env(config, **(env or {})), capture_output=True,
                              text=True, timeout=timeout, check=False)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


def run_local(*args, timeout=180, env=None):
    return subprocess.run([sys.executable, TASK, "local", *args], env=task_env(None, **(env or {})),
                          capture_output=True, text=True, timeout=timeout, check=False)


def wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def release_ownership(model_dir):
    """As if this process's writer had exited: its ownership record names a dead process."""
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel

    fence.release_all()
    for name in os.listdir(model_dir):
        if name.startswith(".bwtf-owner-"):
            path = os.path.join(model_dir, name)
            with open(path, encoding="utf-8") as stream:
                record = json.load(stream)
            record["pid_start"] = "exited"
            with open(path, "w", encoding="utf-8") as stream:
                json.dump(record, stream)
