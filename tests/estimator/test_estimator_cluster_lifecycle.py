"""A localhost ps cluster's tasks end by themselves: the evaluator after the final
checkpoint, every task on SIGTERM (the chief after a final save), and a
``--sync_replicas`` chief without waiting out its queue runner."""
import json
import re
import signal
import time

import pytest

from bwtf import ckpt
from estimator_helpers import finish, free_ports, start_train

_SYNTHETIC = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
              "--batch_size=8", "--log_every_steps=10", "--eval_steps=2"]

pytestmark = pytest.mark.slow


def _classic_flags(num_workers):
    ports = free_ports(1 + num_workers)
    workers = ",".join(f"localhost:{port}" for port in ports[1:])
    return [f"--ps_hosts=localhost:{ports[0]}", f"--worker_hosts={workers}"]


def _start(tmp_path, name, flags, roles):
    """Starts (job_name, task_index) tasks; returns {task: (process, log path)}."""
    tasks = {}
    for job_name, index in roles:
        log_path = tmp_path / f"{name}-{job_name}{index}.log"
        tasks[f"{job_name}{index}"] = (
            start_train([*flags, f"--job_name={job_name}", f"--task_index={index}"], log_path), log_path)
    return tasks


def _wait_for(log_path, process, text, timeout=180):
    deadline = time.monotonic() + timeout
    while text not in log_path.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.5)


def _history_steps(model_dir):
    history = model_dir / "eval_validation" / "history.jsonl"
    return [json.loads(line)["global_step"] for line in history.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(420)
def test_the_evaluator_task_sees_each_checkpoint_once_and_exits_after_the_final_one(tmp_path):
    model_dir = tmp_path / "run"
    flags = [*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=30", "--save_checkpoints_steps=10",
             "--eval_throttle_secs=1", "--eval_timeout_secs=240", *_classic_flags(1)]
    tasks = _start(tmp_path, "eval", flags, [("ps", 0), ("evaluator", 0), ("worker", 0)])
    results = {task: finish(process, log_path, 300) for task, (process, log_path) in tasks.items()}
    for task, (code, log) in results.items():
        assert code == 0, f"{task} exited with {code}:\n{log[-3000:]}"
    steps = _history_steps(model_dir)
    assert steps[-1] == 30 and len(steps) == len(set(steps)) and steps == sorted(steps), steps
    assert "final step 30 evaluated; the evaluator stops" in results["evaluator0"][1]
    assert re.search(r'"global_step": 30.*"precision_at_1"', results["evaluator0"][1])

    # A restarted evaluator reads the history: nothing to do, it exits at once.
    restarted = _start(tmp_path, "again", flags, [("evaluator", 0)])["evaluator0"]
    code, log = finish(*restarted, 120)
    assert code == 0, log[-3000:]
    assert "evaluating checkpoint" not in log and _history_steps(model_dir) == steps


def _stop_step(chief_log):
    match = re.search(r"Stopping at step (\d+) after a final save: SIGTERM", chief_log)
    assert match, chief_log[-3000:]
    return int(match.group(1))


@pytest.mark.timeout(480)
def test_sigterm_to_every_task_saves_once_stops_all_and_the_rerun_resumes_there(tmp_path):
    model_dir = tmp_path / "run"
    common = [*_SYNTHETIC, f"--model_dir={model_dir}", "--save_checkpoints_steps=100000",
              "--eval_throttle_secs=1"]
    roles = [("ps", 0), ("evaluator", 0), ("worker", 1), ("worker", 0)]
    tasks = _start(tmp_path, "term", [*common, "--train_steps=1000000", *_classic_flags(2)], roles)
    for task in ("worker0", "worker1"):
        _wait_for(tasks[task][1], tasks[task][0], "images/s job")
    for process, _ in tasks.values():
        process.send_signal(signal.SIGTERM)
    results = {task: finish(process, log_path, 120) for task, (process, log_path) in tasks.items()}
    expected = {"ps0": 0, "evaluator0": ckpt.EXIT_REQUEUE, "worker0": ckpt.EXIT_REQUEUE,
                "worker1": ckpt.EXIT_REQUEUE}
    assert {task: code for task, (code, _) in results.items()} == expected, \
        {task: log[-2000:] for task, (_, log) in results.items()}
    # The other worker may finish one more asynchronous step before it stops;
    # the chief's end() then saves that step too, so nothing trained is lost.
    stopped_at = ckpt.latest_intact_checkpoint(str(model_dir)).step
    assert 0 < _stop_step(results["worker0"][1]) <= stopped_at
    assert "worker stops after this step: SIGTERM" in results["worker1"][1]

    rerun = _start(tmp_path, "rerun", [*common, f"--train_steps={stopped_at + 10}", *_classic_flags(2)], roles)
    results = {task: finish(process, log_path, 240) for task, (process, log_path) in rerun.items()}
    assert {task: code for task, (code, _) in results.items()} == {task: 0 for task in expected}, \
        {task: log[-2000:] for task, (_, log) in results.items()}
    chief_log = results["worker0"][1]
    assert f"final step {stopped_at + 10} evaluated" in results["evaluator0"][1]
    assert f"(step {stopped_at})" in chief_log and f"done: {stopped_at + 10} steps (10 this run)" in chief_log


@pytest.mark.timeout(300)
def test_a_sync_replicas_chief_does_not_wait_out_its_blocked_queue_runner(tmp_path):
    model_dir = tmp_path / "run"
    flags = [*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=20", "--save_checkpoints_steps=10",
             "--sync_replicas", *_classic_flags(2)]
    tasks = _start(tmp_path, "sync", flags, [("ps", 0), ("worker", 1), ("worker", 0)])
    results = {task: finish(process, log_path, 240) for task, (process, log_path) in tasks.items()}
    for task, (code, log) in results.items():
        assert code == 0, f"{task} exited with {code}:\n{log[-3000:]}"
    # Without the release, TF logs this after its 120 s grace period for the thread.
    assert "Coordinator stopped with threads still running" not in results["worker0"][1]
    assert "done: 20 steps (20 this run)" in results["worker0"][1]
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 20


@pytest.mark.timeout(360)
def test_workers_that_come_after_the_chief_has_finished_end_with_0(tmp_path):
    """Under --sync_replicas the chief can train alone; a worker still starting
    when it finishes (held here with SIGSTOP past its step check) found the ps
    gone and exited 70 after 60 s. It ends with 0 once it runs again, saying
    why; a worker that starts after the whole job skips training without
    waiting for its peers."""
    model_dir = tmp_path / "run"
    flags = [*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=200", "--batch_size=2",
             "--save_checkpoints_steps=1000", "--sync_replicas", "--peer_timeout_secs=60", *_classic_flags(3)]
    tasks = _start(tmp_path, "late", flags, [("ps", 0), ("worker", 0), ("worker", 1)])
    (chief, chief_log), (worker, worker_log) = tasks["worker0"], tasks["worker1"]
    _wait_for(chief_log, chief, "/200 loss")  # Initialised and training, alone.
    chief.send_signal(signal.SIGSTOP)
    try:
        _wait_for(worker_log, worker, "trainable parameters")  # Past its step check.
        worker.send_signal(signal.SIGSTOP)
    finally:
        chief.send_signal(signal.SIGCONT)
    try:
        for task in ("worker0", "ps0"):
            code, log = finish(*tasks[task], 240)
            assert code == 0, f"{task} exited with {code}:\n{log[-3000:]}"
    finally:
        worker.send_signal(signal.SIGCONT)
    start = time.monotonic()
    code, log = finish(worker, worker_log, 90)
    assert code == 0, log[-3000:]
    assert "worker:0 ends with 0: the chief has gone and the checkpoint at step 200" in log
    assert time.monotonic() - start < 30, "the worker waited for the chief timeout"
    later = _start(tmp_path, "later", flags, [("worker", 2)])
    code, log = finish(*later["worker2"], 120)
    assert code == 0, log[-3000:]
    assert "Skipping training: ckpt-200 is intact and at or past --train_steps=200" in log
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 200
