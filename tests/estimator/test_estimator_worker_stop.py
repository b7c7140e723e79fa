"""A ps worker's stop hook and the evaluator's sleep, driven without a cluster."""
import os
import signal
import time

import pytest

from bwtf import ckpt
from bwtf.estimator.cluster import worker_stop as _worker_stop


class _RunContext:
    stop_requested = False

    def request_stop(self):
        self.stop_requested = True


def _one_step(hook):
    context = _RunContext()
    hook.after_run(context, None)
    return context.stop_requested


@pytest.mark.parametrize("walltime_end, stops", [
    (lambda: time.time() + 60, True),     # inside the 120 s margin: stop now, as the chief does
    (lambda: time.time() + 3600, False),
])
def test_the_worker_stops_once_the_walltime_margin_is_reached(walltime_end, stops):
    hook = _worker_stop.WorkerStopHook((), walltime_margin_secs=120.0,
                                       environ={"BWTF_WALLTIME_END": str(walltime_end())})
    hook.begin()
    assert _one_step(hook) is stops
    assert ckpt.stop_requested() == ("walltime" if stops else None)


def test_a_malformed_walltime_variable_is_refused_before_training():
    with pytest.raises(ckpt.WalltimeEnvError, match="BWTF_WALLTIME_END"):
        _worker_stop.WorkerStopHook((), walltime_margin_secs=120.0, environ={"BWTF_WALLTIME_END": "soon"})


def test_a_stop_signal_stops_the_worker_after_its_step_and_restores_the_handler():
    before = signal.getsignal(signal.SIGUSR1)
    hook = _worker_stop.WorkerStopHook((signal.SIGUSR1,))
    hook.begin()
    assert not _one_step(hook)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert _one_step(hook) and ckpt.stop_requested() == "SIGUSR1"
    hook.end(None)
    assert signal.getsignal(signal.SIGUSR1) is before


def test_the_evaluators_sleep_ends_early_on_a_stop_signal():
    before = signal.getsignal(signal.SIGUSR1)
    try:
        sleep = _worker_stop.signal_aware_sleep((signal.SIGUSR1,))
        sleep(0.01)  # no signal yet: an ordinary sleep
        os.kill(os.getpid(), signal.SIGUSR1)
        with pytest.raises(_worker_stop.StopSignal, match="SIGUSR1"):
            sleep(600)
    finally:
        signal.signal(signal.SIGUSR1, before)
