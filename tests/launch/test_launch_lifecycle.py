"""The ps/worker lifecycle rules of bwtf.estimator.cluster.ps_lifecycle, without a cluster.

The end-to-end behaviour (a ps that exits 0 when the chief is done, 70 when it
vanished) is covered with real processes in test_launch_local.py.
"""
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bwtf.estimator.cluster import ports
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


def _run_watchdog(finished, chief_timeout_secs, chief_secs=0.5):
    """A worker process whose chief listens for ``chief_secs`` and then goes;
    ``finished`` is the source of the watchdog's ``finished`` argument.
    Returns (result, seconds from the start to the worker's end)."""
    program = textwrap.dedent(f"""
        import dataclasses, socket, time
        from absl import logging
        from bwtf.estimator.cluster import ps_lifecycle as _ps_lifecycle

        logging.set_verbosity(logging.INFO)  # As bwtf-train sets it.

        @dataclasses.dataclass
        class Role:
            task_type: str
            task_id: int
            cluster_spec: dict

        chief = socket.create_server(("", 0))
        role = Role("worker", 0, {{"chief": [f"localhost:{{chief.getsockname()[1]}}"]}})
        _ps_lifecycle.start_worker_watchdog(role, chief_timeout_secs={chief_timeout_secs}, poll_secs=0.1,
                                            finished={finished})
        time.sleep({chief_secs})
        chief.close()
        time.sleep(40)  # Stands for a session that waits forever for a ps.
        print("not stopped")
    """)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=55)
    return result, time.monotonic() - start


@pytest.mark.timeout(60)
def test_worker_watchdog_ends_a_stuck_worker_once_the_chief_has_vanished():
    result, _ = _run_watchdog("None", chief_timeout_secs=1)
    assert result.returncode == _ps_lifecycle.EXIT_CHIEF_VANISHED
    assert "worker:0 exits with 70" in result.stderr and "stopped accepting connections" in result.stderr
    assert "not stopped" not in result.stdout


@pytest.mark.timeout(60)
def test_worker_watchdog_ends_a_worker_with_0_once_the_chief_has_finished_and_gone():
    """The chief saved its final checkpoint and exited: the worker ends at once
    (not after the 30 s chief timeout) with 0, saying why."""
    result, secs = _run_watchdog("lambda: 37", chief_timeout_secs=30)
    assert result.returncode == 0, result.stderr[-2000:]
    assert secs < 25, f"the worker took {secs:.0f} s: it waited for the chief timeout"
    assert ("worker:0 ends with 0: the chief has gone and the checkpoint at step 37 (at or past --train_steps) "
            "is intact") in result.stderr
    assert "not stopped" not in result.stdout


@pytest.mark.timeout(60)
def test_worker_watchdog_still_ends_with_70_when_the_finished_check_fails():
    """A model_dir that cannot be read proves nothing: the watchdog keeps
    running and ends the worker with 70 after the timeout."""
    result, _ = _run_watchdog("lambda: 1 / 0", chief_timeout_secs=1)
    assert result.returncode == _ps_lifecycle.EXIT_CHIEF_VANISHED, result.stderr[-2000:]
    assert "worker:0 exits with 70" in result.stderr
    assert "not stopped" not in result.stdout


@pytest.mark.timeout(60)
def test_worker_watchdog_never_ends_a_worker_whose_chief_is_up():
    """The final checkpoint is there from the start, but the chief is up for
    4 s (evaluating it, say): the worker is ended only after the chief has gone."""
    result, secs = _run_watchdog("lambda: 37", chief_timeout_secs=30, chief_secs=4)
    assert result.returncode == 0, result.stderr[-2000:]
    assert secs >= 4, f"the worker was ended after {secs:.1f} s, while its chief was up"
    assert "not stopped" not in result.stdout


@pytest.mark.timeout(60)
def test_worker_watchdog_ends_with_70_even_when_the_finished_check_hangs():
    """A model_dir on a stalled mount (the check never returns) must not keep
    the watchdog from ending the worker once the chief timeout has passed."""
    result, secs = _run_watchdog("lambda: time.sleep(3600)", chief_timeout_secs=1)
    assert result.returncode == _ps_lifecycle.EXIT_CHIEF_VANISHED, result.stderr[-2000:]
    assert "worker:0 exits with 70" in result.stderr
    assert secs < 20, f"the worker took {secs:.0f} s to end with a 1 s chief timeout"


def test_wait_for_peers_ends_when_done_reports_the_job_finished():
    """A worker waiting for peers that have exited stops waiting as soon as
    ``done`` reports the final checkpoint, long before the timeout."""
    clock = _Clock()
    answers = iter([None, None, 400])

    def sleep(secs):
        clock.now += secs

    step = ports.wait_for_peers(["localhost:1"], timeout_secs=600, clock=clock, sleep=sleep,
                                done=lambda: next(answers))
    assert step == 400 and clock.now == 2.0
    with pytest.raises(ports.PeersUnreachableError, match="no answer from localhost:1 after 5 s"):
        ports.wait_for_peers(["localhost:1"], timeout_secs=5, clock=clock, sleep=sleep, done=lambda: None)
