"""Real localhost clusters of bwtf-train under bwtf-launch: clean ends and survived faults.

Each test trains small_cnn on the digits archive with 1 ps, the chief and one
worker, kills or signals one part mid-training, and checks what a user would
see: every process ended with the right status, the run resumed from the
newest intact checkpoint, and how many steps were lost.
"""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from launch_helpers import wait_until_gone

pytestmark = [pytest.mark.slow]

_SAVE_STEPS = 100


def _train_flags(data_dir, model_dir, train_steps):
    return ["--model=small_cnn", f"--data_dir={data_dir}", "--dataset=imagenet_archive/present",
            f"--model_dir={model_dir}", f"--train_steps={train_steps}", "--batch_size=32",
            f"--save_checkpoints_steps={_SAVE_STEPS}", "--log_every_steps=10", "--eval_throttle_secs=5"]


def _statuses(output):
    return dict(re.findall(r"^\[launch\] (\S+) exited with status (\d+)$", output, re.M))


def _chief_steps(output):
    return [int(s) for s in re.findall(r"^\[chief\] .*(?:\]|\d\d:\d\d:\d\d) step (\d+)/", output, re.M)]


def _wait_for_chief_step(run, at_least, timeout_secs):
    pattern = re.compile(r"^\[chief\] .*(?:\]|\d\d:\d\d:\d\d) step (\d+)/", re.M)
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        steps = [int(s) for s in pattern.findall(run.output())]
        if steps and steps[-1] >= at_least:
            return steps[-1]
        assert run.process.poll() is None, run.output()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"the chief did not reach step {at_least} in {timeout_secs}s")


def _pid_of(run, task):
    return int(re.findall(rf"(?:started |, ){re.escape(task)} \(pid (\d+)\)", run.output())[-1])


def _verify(model_dir):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(model_dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(240)
def test_clean_run_ends_every_process_with_status_zero(start_launch, launch_mark, digits_data_dir, tmp_path):
    run = start_launch(["--num_ps=1", "--num_workers=2", "--evaluator", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", 200))
    assert run.wait(200) == 0, run.output()[-3000:]
    output = run.output()
    assert _statuses(output) == {"chief": "0", "worker:0": "0", "ps:0": "0", "evaluator": "0"}
    assert re.search(r"^\[chief\] .*final precision@1 0\.\d+", output, re.M)
    assert "[evaluator] " in output and "precision_at_1 = " in output
    assert "[ps:0] " in output and "the chief finished with status 0" in output
    assert wait_until_gone(launch_mark, 5) == []
    assert _verify(tmp_path / "model").returncode == 0


@pytest.mark.timeout(300)
def test_sigterm_saves_at_the_current_step_and_the_rerun_loses_none(start_launch, launch_mark,
                                                                     digits_data_dir, tmp_path):
    flags = _train_flags(digits_data_dir, tmp_path / "model", 700)
    run = start_launch(["--num_ps=1", "--num_workers=2", "--"] + flags)
    _wait_for_chief_step(run, 150, 150)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(120) == 75, run.output()[-3000:]
    output = run.output()
    assert re.search(r"^\[chief\] .*Stopping at step \d+ after a final save: SIGTERM", output, re.M)
    stopped = int(re.findall(r"^\[chief\] .*Saved checkpoint \S*/ckpt-(\d+)/", output, re.M)[-1])
    assert stopped < 700
    assert _statuses(output)["ps:0"] == "0"
    assert f"OK      {tmp_path / 'model'}/ckpt-{stopped}" in _verify(tmp_path / "model").stdout
    assert wait_until_gone(launch_mark, 5) == []

    rerun = start_launch(["--num_ps=1", "--num_workers=2", "--"] + flags)
    assert rerun.wait(200) == 0, rerun.output()[-3000:]
    done = re.search(r"done: (\d+) steps \((\d+) this run\)", rerun.output())
    assert f"resuming from {tmp_path / 'model'}/ckpt-{stopped}/" in rerun.output()
    assert int(done.group(1)) - int(done.group(2)) == stopped  # Zero steps lost.


@pytest.mark.timeout(300)
def test_killed_ps_is_restarted_and_training_recovers_from_the_newest_checkpoint(
        start_launch, launch_mark, digits_data_dir, tmp_path):
    run = start_launch(["--num_ps=1", "--num_workers=2", "--max_restarts=1", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", 600))
    _wait_for_chief_step(run, 250, 150)
    subprocess.run(["kill", "-KILL", str(_pid_of(run, "ps:0"))], check=True)
    assert run.wait(240) == 0, run.output()[-3000:]
    output = run.output()
    before_kill = output.split("ps:0 was killed by SIGKILL")[0]
    step_at_kill = _chief_steps(before_kill)[-1]
    restored = int(re.search(r"^\[chief\] .*Restored .*/ckpt-(\d+)/", output, re.M).group(1))
    steps_lost = max(0, step_at_kill - restored)
    print(f"ps killed at step >= {step_at_kill}, restored from step {restored}: {steps_lost} steps lost")
    assert steps_lost <= _SAVE_STEPS
    statuses = _statuses(output)
    assert statuses["chief"] == "0" and statuses["ps:0"] == "0"
    # A worker still rebuilding its session when the ps tasks end is stopped (by
    # its chief watchdog, 70, or by the launcher), and the log says so.
    assert statuses["worker:0"] == "0" or "cannot finish without them" in output \
        or "worker:0 exits with 70" in output
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.timeout(300)
# The chief alone trains on while a worker restarts, so the worker case runs
# longer: the restarted worker must still find steps to train.
@pytest.mark.parametrize("task, train_steps", [("chief", 600), ("worker:0", 1200)])
def test_killed_chief_or_worker_is_restarted_and_the_run_completes(
        task, train_steps, start_launch, launch_mark, digits_data_dir, tmp_path):
    run = start_launch(["--num_ps=1", "--num_workers=2", "--max_restarts=1", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", train_steps))
    _wait_for_chief_step(run, 250, 150)
    subprocess.run(["kill", "-KILL", str(_pid_of(run, task))], check=True)
    assert run.wait(240) == 0, run.output()[-3000:]
    output = run.output()
    assert f"{task} was killed by SIGKILL; restarting it (1/1)" in output
    after_restart = output.split("restarting it (1/1)")[1]
    steps_after = [int(s) for s in re.findall(rf"^\[{task}\] .*(?:\]|\d\d:\d\d:\d\d) step (\d+)/", after_restart, re.M)]
    assert steps_after and max(steps_after) > 250  # The restarted task trained again.
    if task == "chief":
        newest = int(re.findall(r"/ckpt-(\d+)/", output.split("restarting it (1/1)")[0])[-1])
        assert re.search(r"^\[chief\] .*resuming from .*/ckpt-(\d+)/.*\(step (\d+)\)", after_restart, re.M)
        resumed = int(re.search(r"resuming from .*/ckpt-(\d+)/", after_restart).group(1))
        assert resumed >= newest  # The newest intact checkpoint, or a newer one the worker's progress made.
    assert _statuses(output) == {"chief": "0", "worker:0": "0", "ps:0": "0"}
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.timeout(300)
def test_collective_worker_is_ended_promptly_when_the_chief_dies(start_launch, launch_mark, digits_data_dir,
                                                                  tmp_path):
    """A collective worker cannot go on without its chief: it must not wait out the 300 s grace."""
    run = start_launch(["--num_ps=0", "--num_workers=2", "--distribution=collective", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", 100000))
    _wait_for_chief_step(run, 20, 200)
    subprocess.run(["kill", "-KILL", str(_pid_of(run, "chief"))], check=True)
    # The default --shutdown_grace_secs is 300; a stranded worker used to hold the job that long.
    code = run.wait(120)
    output = run.output()
    statuses = _statuses(output)
    assert statuses["chief"] == "137" and code == 137, output[-3000:]
    # Ended by its own watchdog (70) or killed by the launcher, and the log says which.
    assert statuses.get("worker:0") == "70" and "worker:0 exits with 70" in output \
        or "a collective worker cannot go on without the chief" in output \
        or "worker:0 stopped: the chief failed with status 137" in output, output[-3000:]
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.timeout(200)
def test_ctrl_c_saves_at_the_current_step_and_exits_75_without_a_traceback(
        start_launch, launch_mark, digits_data_dir, tmp_path):
    run = start_launch(["--num_ps=1", "--num_workers=2", "--evaluator", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", 5000))
    _wait_for_chief_step(run, 100, 150)
    # A terminal's Ctrl-C reaches the launcher's foreground process group.
    os.killpg(run.process.pid, signal.SIGINT)
    assert run.wait(120) == 75, run.output()[-3000:]
    output = run.output()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert re.search(r"^\[chief\] .*Stopping at step \d+ after a final save: SIGTERM", output, re.M)
    saved = int(re.findall(r"^\[chief\] .*Saved checkpoint \S*/ckpt-(\d+)/", output, re.M)[-1])
    assert saved >= _chief_steps(output)[-1]  # Nothing trained after the final save is lost.
    statuses = _statuses(output)
    assert set(statuses) == {"chief", "worker:0", "ps:0", "evaluator"}  # One line per task.
    assert statuses["chief"] == "75" and statuses["ps:0"] == "0"
    assert f"OK      {tmp_path / 'model'}/ckpt-{saved}" in _verify(tmp_path / "model").stdout
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.timeout(200)
def test_ctrl_c_on_a_single_bwtf_train_saves_and_exits_75(digits_data_dir, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        train = subprocess.Popen([sys.executable, "-m", "bwtf.estimator.train", "--distribution=none"]
                                 + _train_flags(digits_data_dir, tmp_path / "model", 5000),
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 150
            while not re.search(r"(?:\]|\d\d:\d\d:\d\d) step (1\d\d|[2-9]\d\d)/", log.read_text(errors="replace")):
                assert time.monotonic() < deadline and train.poll() is None, log.read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(train.pid, signal.SIGINT)
            assert train.wait(120) == 75, log.read_text()[-3000:]
        finally:
            if train.poll() is None:
                train.kill()
    output = log.read_text(errors="replace")
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert re.search(r"Stopping at step \d+ after a final save: SIGTERM", output)


@pytest.mark.timeout(200)
def test_a_second_sigterm_ends_the_launcher_and_every_task_at_once(
        start_launch, launch_mark, digits_data_dir, tmp_path):
    run = start_launch(["--num_ps=1", "--num_workers=2", "--evaluator", "--"]
                       + _train_flags(digits_data_dir, tmp_path / "model", 5000))
    _wait_for_chief_step(run, 50, 150)
    run.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    run.process.send_signal(signal.SIGTERM)
    status = run.wait(60)  # Used to hang forever here.
    output = run.output()
    assert "second SIGTERM: killing every task now" in output
    assert status != 0
    assert set(_statuses(output)) == {"chief", "worker:0", "ps:0", "evaluator"}
    assert wait_until_gone(launch_mark, 5) == []
    assert _verify(tmp_path / "model").returncode in (0, 1)  # Whatever was committed still verifies.


@pytest.mark.timeout(200)
@pytest.mark.parametrize("bad_flag, message", [
    ("--data_dir=/nonexistent/tfds", "/nonexistent/tfds"),
    ("--model_dir=", "--model_dir"),
], ids=["bad_data_dir", "no_model_dir"])
def test_a_chief_failing_at_startup_ends_every_task_within_seconds(
        bad_flag, message, start_launch, launch_mark, digits_data_dir, tmp_path):
    flags = _train_flags(digits_data_dir, tmp_path / "model", 300) + [bad_flag]
    started = time.monotonic()
    run = start_launch(["--num_ps=1", "--num_workers=2", "--evaluator", "--"] + flags)
    # Bounded well below the 300 s shutdown grace the ps used to be given.
    assert run.wait(120) == 2, run.output()[-3000:]
    elapsed = time.monotonic() - started
    output = run.output()
    assert message in output
    assert "Traceback" not in output, output[-3000:]
    for task in ("worker:0", "ps:0", "evaluator"):
        assert re.search(rf"^\[launch\] {re.escape(task)} (exited with status 2|stopped: the chief failed "
                         r"with status 2)", output, re.M), output[-3000:]
    assert wait_until_gone(launch_mark, 5) == []
    print(f"bwtf-launch ended {elapsed:.0f}s after the start with a chief that failed at startup")
