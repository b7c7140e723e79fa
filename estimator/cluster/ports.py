"""The one port probe of a job's tasks: is a port free here, does an address answer, wait for peers.

    ensure_port_free("node3:20001")           # before a server binds: PortInUseError names the port
    accepts_connections("node1:20000")         # True when something listens there
    wait_for_peers(["node1:20000"], timeout_secs=600)   # PeersUnreachableError after the timeout

TensorFlow's own failures here read like crashes or hangs: a taken port is a
C++ log line and an abort, and a session whose ps cannot be reached waits in
C++ forever, where no Python signal handler runs (so SIGTERM is never acted
on). Probing first, from Python, turns both into one line that names the
address, and keeps the process responsive to signals while it waits.

Deliberately left out: choosing ports (``roles`` derives them from the job id,
``local_supervisor`` asks the OS) and anything beyond a TCP connect.
"""
import errno
import socket
import time

import bwtf


class PortInUseError(bwtf.UserError, RuntimeError):
    """This task's own port is taken by another process."""


class PeersUnreachableError(bwtf.UserError):
    """The tasks this one needs did not answer within the timeout."""


def split_address(address):
    """('host', port) from 'host:port'; ValueError otherwise."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected 'host:port' in the cluster spec, found {address!r}")
    return host, int(port)


def port_is_free(port):
    """True when ``port`` can be bound on this host (any address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def ensure_port_free(address):
    """Raises PortInUseError when this task's port cannot be bound."""
    _, port = split_address(address)
    if not port_is_free(port):
        raise PortInUseError(
            f"port {port} (this task's address {address}) is already in use by another "
            "process; stop that process, or choose other ports (a different job id, "
            "--port_base, or free ports in TF_CONFIG).")


def accepts_connections(address, timeout_secs=1.0):
    """True when something listens on ``address`` ('host:port')."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_secs):
            return True
    except OSError:
        return False


def wait_for_peers(addresses, timeout_secs, poll_secs=1.0, clock=time.monotonic, sleep=time.sleep,
                   done=None):
    """Returns once every address accepts connections; PeersUnreachableError after ``timeout_secs``.

    Each wait is a short Python sleep, so a SIGTERM (or SIGINT) ends the
    process at once instead of being held up by a blocked C++ call.
    ``done()``, when given, is asked between tries: whatever it returns other
    than None ends the wait and is returned (a worker whose job finished
    while it waited for peers that have exited).
    """
    deadline = clock() + timeout_secs
    waiting = list(addresses)
    while True:
        waiting = [address for address in waiting if not accepts_connections(address)]
        if not waiting:
            return None
        outcome = done() if done is not None else None
        if outcome is not None:
            return outcome
        if clock() >= deadline:
            raise PeersUnreachableError(
                f"no answer from {', '.join(waiting)} after {timeout_secs:g} s; check that those tasks "
                "run and that the host names and ports (TF_CONFIG, --ps_hosts/--worker_hosts, or the "
                "scheduler's node list) are right, or raise --peer_timeout_secs")
        sleep(min(poll_secs, max(deadline - clock(), 0.0)) or poll_secs)