"""The ps/worker lifecycle rules of bwtf.estimator.cluster.ps_lifecycle, without a cluster.

The end-to-end behaviour (a ps that exits 0 when the chief is done, 70 when it
vanished) is covered with real processes in test_launch_local.py.
"""
import socket
import subprocess
import sys
import textwrap

import pytest

from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _watch(clock):
    return _ps_lifecycle._ChiefWatch("localhost:1", chief_timeout_secs=10, chief_start_timeout_secs=100,
                                     clock=clock)


def test_chief_watch_gives_up_only_after_the_timeout_once_seen():
    clock = _Clock()
    watch = _watch(clock)
    assert watch.vanished_reason(reachable=True) is None
    clock.now = 9.0
    assert watch.vanished_reason(reachable=False) is None
    clock.now = 10.5
    assert "stopped accepting connections 10s ago (limit 10s)" in watch.vanished_reason(reachable=False)


def test_chief_watch_forgives_a_chief_restarted_within_the_timeout():
    clock = _Clock()
    watch = _watch(clock)
    watch.vanished_reason(reachable=True)
    clock.now = 8.0
    assert watch.vanished_reason(reachable=False) is None
    clock.now = 9.0
    assert watch.vanished_reason(reachable=True) is None  # Restarted.
    clock.now = 18.0
    assert watch.vanished_reason(reachable=False) is None


def test_chief_watch_gives_up_on_a_chief_that_never_came_up():
    clock = _Clock()
    watch = _watch(clock)
    clock.now = 99.0
    assert watch.vanished_reason(reachable=False) is None
    clock.now = 101.0
    assert "never accepted connections within 100s" in watch.vanished_reason(reachable=False)


@pytest.mark.parametrize("spec, message", [
    ({"ps": ["localhost:2"]}, "neither a 'chief' nor a 'worker' job"),
    ({"chief": ["localhost"], "ps": ["localhost:2"]}, "expected 'host:port'"),
])
def test_bad_cluster_specs_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        _ps_lifecycle._ChiefWatch(_ps_lifecycle._chief_address(spec), 1, 1)
        _ps_lifecycle.accepts_connections(_ps_lifecycle._chief_address(spec))


def test_ensure_port_free_names_the_taken_port():
    with socket.create_server(("", 0)) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(_ps_lifecycle.PortInUseError, match=f"port {port} .* is already in use"):
            _ps_lifecycle.ensure_port_free(f"localhost:{port}")
    _ps_lifecycle.ensure_port_free(f"localhost:{port}")  # Free again once released.


@pytest.mark.timeout(60)
def test_worker_watchdog_ends_a_stuck_worker_once_the_chief_has_vanished():
    program = textwrap.dedent("""
        import dataclasses, socket, time
        from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle

        @dataclasses.dataclass
        class Role:
            task_type: str
            task_id: int
            cluster_spec: dict

        chief = socket.create_server(("", 0))
        role = Role("worker", 0, {"chief": [f"localhost:{chief.getsockname()[1]}"]})
        _ps_lifecycle.start_worker_watchdog(role, chief_timeout_secs=1, poll_secs=0.1)
        time.sleep(0.5)
        chief.close()
        time.sleep(30)  # Stands for a session that waits forever for a ps.
        print("not stopped")
    """)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=50)
    assert result.returncode == _ps_lifecycle.EXIT_CHIEF_VANISHED
    assert "worker:0 exits with 70" in result.stderr and "stopped accepting connections" in result.stderr
    assert "not stopped" not in result.stdout
