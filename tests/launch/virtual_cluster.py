"""The virtual multi-node cluster of virtual_cluster.sh, driven from Python tests.

``VirtualCluster(state_dir, nodes=3, local_nodes=("node3",))`` wraps the
script: ``up()`` builds the nodes (network, UTS and mount namespaces on a
private bridge, with "Lustre" at ``lustre`` shared by every node except the
``local_nodes``), ``slurm()`` starts slurmctld and one slurmd per node, and
``down()`` removes everything, also after a failed ``up``. ``run(node, argv)``
runs a command on a node; ``kill_node(node)`` SIGKILLs every process on it
(slurmd included), which is what a crashed node looks like to everyone else.
Slurm use holds ``/tmp/bwtf-slurm.lock`` (``slurm_lock``), so that two test
runs never start Slurm daemons at once on this machine.
"""
import contextlib
import fcntl
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time
import uuid

SCRIPT = pathlib.Path(__file__).resolve().parent / "virtual_cluster.sh"
SLURM_LOCK = "/tmp/bwtf-slurm.lock"


def unavailable_reason():
    """Why this machine cannot build the virtual cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the virtual cluster needs root (network, UTS and mount namespaces)"
    for tool in ("ip", "nsenter", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (iproute2 / util-linux)"
    probe = f"bwprobe{uuid.uuid4().hex[:6]}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"cannot create a network namespace here: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def _lock_held_by_an_ancestor(path):
    """True when `flock PATH pytest ...` (or similar) already holds the lock for us."""
    inode = os.stat(path).st_ino
    for line in pathlib.Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            if int(fields[4]) in _ancestors():
                return True
    return False


@contextlib.contextmanager
def slurm_lock():
    """Holds the machine-wide lock that every Slurm-starting test takes.

    Run by hand under ``flock /tmp/bwtf-slurm.lock pytest ...``, the lock is
    already ours (held by an ancestor), and taking it again would wait forever.
    """
    with open(SLURM_LOCK, "a+") as handle:
        if _lock_held_by_an_ancestor(SLURM_LOCK):
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class VirtualCluster:
    """One virtual cluster whose state lives in ``state_dir``."""

    def __init__(self, state_dir, nodes=3, local_nodes=()):
        self.state_dir = pathlib.Path(state_dir)
        self.nodes = [f"node{k}" for k in range(1, nodes + 1)]
        self.local_nodes = tuple(local_nodes)
        self.lustre = self.state_dir / "lustre"  # The path every node uses.
        self.shared = self.state_dir / "shared"  # What the sharing nodes see there.
        self.rsh_agent = self.state_dir / "rsh_agent"
        self.env = dict(os.environ)

    def local(self, node):
        """What ``node`` (one of local_nodes) sees at ``lustre``."""
        return self.state_dir / "local" / node

    def _script(self, *args, timeout=600):
        result = subprocess.run(["bash", str(SCRIPT)] + [str(a) for a in args], capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"virtual_cluster.sh {' '.join(map(str, args))} failed:\n"
                               f"{result.stdout}\n{result.stderr}")
        return result.stdout

    def up(self):
        self._script("up", self.state_dir, len(self.nodes), ",".join(self.local_nodes))
        self.subnet = re.search(r"^SUBNET=(.*)$", (self.state_dir / "cluster.env").read_text(), re.M).group(1)
        return self

    def address(self, node):
        return f"{self.subnet}.{10 + int(node[len('node'):])}"

    def slurm(self):
        conf = self._script("slurm", self.state_dir).strip().splitlines()[-1]
        self.env["SLURM_CONF"] = conf
        return self

    def down(self):
        self._script("down", self.state_dir, timeout=180)

    def command(self, node, argv):
        """argv prefixed so that it runs on ``node`` in the current directory."""
        return ["bash", str(SCRIPT), "run", str(self.state_dir), node] + list(argv)

    def run(self, node, argv, **kwargs):
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(self.command(node, argv), **kwargs)

    def node_pids(self, node):
        netns = f"{self._id()}-{node}"
        listed = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()]

    def kill_node(self, node):
        """SIGKILLs every process of ``node`` until none is left (its slurmd too)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = self.node_pids(node)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        raise AssertionError(f"processes of {node} survived SIGKILL: {self.node_pids(node)}")

    def restart_slurmd(self, node):
        """Starts slurmd again on a node that kill_node emptied (the node came back)."""
        result = self.run(node, ["slurmd", "-N", node], env=self.env)
        if result.returncode != 0:
            raise RuntimeError(f"slurmd did not restart on {node}: {result.stderr}")

    def _id(self):
        return re.search(r"^ID=(.*)$", (self.state_dir / "cluster.env").read_text(), re.M).group(1)
