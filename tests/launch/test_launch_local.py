"""bwtf-launch's process handling, with a fast stand-in for bwtf-train (standin_task.py).

The stand-in's ps runs the real ``serve_parameter_server``, so these tests also
cover the ps exiting by itself; the training itself is tested with the real
program in test_launch_faults.py.
"""
import json
import re
import signal
import socket
import subprocess
import sys

import pytest

from launch_helpers import marked_pids, wait_until_gone

STANDIN = ["--task_module=standin_task"]


def _statuses(output):
    return dict(re.findall(r"^\[launch\] (\S+) exited with status (\d+)$", output, re.M))


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_launch_runs_every_task_prefixes_output_and_leaves_nothing(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=1", "--num_workers=3", "--evaluator", "--", "--steps=3"])
    assert run.wait(80) == 0, run.output()
    output = run.output()
    for name in ("chief", "worker:0", "worker:1", "ps:0", "evaluator"):
        assert f"[{name}] " in output
    assert re.search(r"^\[worker:1\] worker:1 step 3$", output, re.M)
    assert _statuses(output) == {"chief": "0", "worker:0": "0", "worker:1": "0", "ps:0": "0", "evaluator": "0"}
    assert "the chief finished with status 0" in output
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_launch_exits_with_the_chief_status_and_stops_the_others(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=1", "--num_workers=2", "--evaluator", "--",
                                  "--steps=3", "--fail_with=3"])
    assert run.wait(80) == 3, run.output()
    output = run.output()
    assert _statuses(output)["chief"] == "3"
    for task in ("worker:0", "ps:0", "evaluator"):  # One line each: ended by itself, or stopped.
        assert re.search(rf"^\[launch\] {task} (exited with status \d+|stopped: the chief failed with status 3)$",
                         output, re.M), output
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_sigterm_reaches_the_chief_which_exits_for_requeue(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=1", "--num_workers=2", "--", "--steps=400", "--step_secs=0.1"])
    run.wait_for_line("[chief] chief:0 step 5", 60)
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(60) == 75, run.output()
    output = run.output()
    assert "SIGTERM received: asking the chief, workers and evaluator to save and stop" in output
    assert "chief:0 stopping at step" in output
    assert _statuses(output)["ps:0"] == "0"  # Kept up for the final save, then released.
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_sigkilled_launcher_leaves_no_task_behind(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=1", "--num_workers=2", "--evaluator", "--",
                                  "--steps=400", "--step_secs=0.1"])
    run.wait_for_line("[evaluator] evaluator:0 step 2", 60)
    assert len(marked_pids(launch_mark)) >= 5
    run.process.send_signal(signal.SIGKILL)
    run.wait(10)
    assert wait_until_gone(launch_mark, 10) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_chief_killed_from_outside_makes_the_launcher_stop_every_task_at_once(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=1", "--num_workers=2", "--evaluator", "--",
                                  "--steps=400", "--step_secs=0.1"])
    run.wait_for_line(" is up", 60)  # The ps has seen the chief's port open.
    chief_pid = int(re.search(r"started chief \(pid (\d+)\)", run.output()).group(1))
    subprocess.run(["kill", "-KILL", str(chief_pid)], check=True)
    assert run.wait(30) == 128 + signal.SIGKILL
    output = run.output()
    for task in ("worker:0", "ps:0", "evaluator"):
        assert f"[launch] {task} stopped: the chief failed with status 137" in output, output[-2000:]
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ps_exits_with_an_error_once_the_chief_has_vanished(launch_env, launch_mark):
    # Without a launcher that sees the chief end (tasks on other nodes), the ps finds out itself.
    ports = [socket.create_server(("localhost", 0)) for _ in range(2)]
    cluster = {"chief": [f"localhost:{ports[0].getsockname()[1]}"],
               "ps": [f"localhost:{ports[1].getsockname()[1]}"]}
    for sock in ports:
        sock.close()
    tasks = {}
    for task_type in ("ps", "chief"):
        env = dict(launch_env, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": task_type, "index": 0}}))
        tasks[task_type] = subprocess.Popen([sys.executable, "-m", "standin_task", "--steps=400", "--step_secs=0.1"],
                                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ps_output = []
        for line in tasks["ps"].stdout:
            ps_output.append(line)
            if " is up" in line:
                break
        tasks["chief"].kill()
        assert tasks["ps"].wait(60) == 70
        ps_output.extend(tasks["ps"].stdout)
        assert "stopped accepting connections" in "".join(ps_output)
    finally:
        for process in tasks.values():
            process.kill()
            process.wait()
    assert wait_until_gone(launch_mark, 5) == []


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_killed_worker_is_restarted_and_the_run_completes(start_launch, launch_mark):
    run = start_launch(STANDIN + ["--num_ps=0", "--num_workers=2", "--distribution=collective",
                                  "--max_restarts=1", "--", "--steps=60", "--step_secs=0.1"])
    run.wait_for_line("[worker:0] worker:0 step 3", 60)
    worker_pid = int(re.search(r", worker:0 \(pid (\d+)\)", run.output()).group(1))
    subprocess.run(["kill", "-KILL", str(worker_pid)], check=True)
    assert run.wait(90) == 0, run.output()
    output = run.output()
    assert "worker:0 was killed by SIGKILL; restarting it (1/1)" in output
    assert len(re.findall(r"(?:started |, )worker:0 \(pid", output)) == 2
    assert _statuses(output)["worker:0"] == "0"
    assert wait_until_gone(launch_mark, 5) == []


def _launch_error(args, env):
    result = subprocess.run([sys.executable, "-m", "bwtf.estimator.launch"] + args, env=env,
                            capture_output=True, text=True, timeout=60)
    return result.returncode, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--num_ps=1", "--num_workers=0"], "--num_workers counts the chief too"),
    (["--num_ps=0", "--distribution=ps"], "--distribution=ps needs --num_ps >= 1"),
    (["--num_ps=2", "--distribution=collective"], "--num_ps must be 0"),
    (["--num_ps=0", "--num_workers=2", "--distribution=none"], "trains in one process"),
    (["--distribution=ps", "--", "--distribution=collective"], "the training flags say --distribution=collective"),
])
def test_bad_launcher_flags_get_a_one_line_error(args, message, launch_env):
    code, stderr = _launch_error(STANDIN + args, launch_env)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr


def test_port_already_in_use_is_refused_before_anything_starts(launch_env, launch_mark):
    with socket.create_server(("", 0)) as holder:
        port = holder.getsockname()[1]
        code, stderr = _launch_error(STANDIN + ["--num_ps=1", "--num_workers=1", f"--port_base={port}"],
                                     launch_env)
    assert code == 2
    assert f"port(s) {port} of --port_base={port}" in stderr and "already in use" in stderr
    assert marked_pids(launch_mark) == []


def test_task_refuses_a_port_in_use_from_tf_config(launch_env):
    with socket.create_server(("", 0)) as holder:
        port = holder.getsockname()[1]
        env = dict(launch_env, TF_CONFIG='{"cluster": {"chief": ["localhost:%d"]}, '
                                         '"task": {"type": "chief", "index": 0}}' % port)
        code, stderr = _launch_error(STANDIN + ["--task", "--"], env)
    assert code == 2
    assert f"port {port} (this task's address localhost:{port}) is already in use" in stderr


def test_task_with_a_different_flag_file_refuses_to_start(tmp_path, launch_env):
    flagfile = tmp_path / "train.flags"
    flagfile.write_text("--steps=3\n")
    digest = subprocess.run(
        [sys.executable, "-m", "bwtf.estimator.launch", "--print_flags_digest", "--", f"--flagfile={flagfile}"],
        env=launch_env, capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    flagfile.write_text("--steps=4\n")  # Another node's copy, or an edit after submission.
    code, stderr = _launch_error(STANDIN + ["--task", f"--flags_digest={digest}", "--",
                                            f"--flagfile={flagfile}"], launch_env)
    assert code == 2
    assert f"the flag file(s) --flagfile={flagfile}" in stderr and f"the launcher computed {digest}" in stderr
    flagfile.write_text("--steps=3\n")
    result = subprocess.run(
        [sys.executable, "-m", "bwtf.estimator.launch"] + STANDIN
        + ["--task", f"--flags_digest={digest}", "--", f"--flagfile={flagfile}"],
        env=launch_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "chief:0 step 3" in result.stdout and "chief:0 step 4" not in result.stdout


@pytest.mark.parametrize("flag_lines, jobs", [
    ([], ["chief", "ps"]),
    (["--distribution=collective"], ["chief"]),
    (["--distribution=collective", "--distribution=ps"], ["chief", "ps"]),
])
def test_evaluator_tf_config_follows_the_distribution_in_the_flag_file(flag_lines, jobs, tmp_path, launch_env):
    flagfile = tmp_path / "job.flags"
    flagfile.write_text("".join(line + "\n" for line in ["--model=small_cnn"] + flag_lines))
    result = subprocess.run(
        [sys.executable, "-m", "bwtf.estimator.launch", "--print_evaluator_tf_config", "--",
         f"--flagfile={flagfile}"], env=launch_env, capture_output=True, text=True, check=True, timeout=60)
    config = json.loads(result.stdout)
    assert sorted(config["cluster"]) == jobs
    assert config["task"] == {"type": "evaluator", "index": 0}
