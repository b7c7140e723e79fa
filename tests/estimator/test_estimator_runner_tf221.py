"""bwtf's runner on TensorFlow 2.21 (no tf.estimator): a get_variable/tf.nn model_fn trains, evaluates, exports.

Runs ``runner_job.py`` with the 2.21 interpreter of the ``tf221_python``
fixture (tests/conftest.py).
"""
import json
import os
import pathlib
import subprocess

import pytest

from estimator_helpers import free_ports, job_env, job_events

_JOB = str(pathlib.Path(__file__).with_name("runner_job.py"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_runner_trains_evaluates_and_exports_on_tf221(tf221_python, tmp_path):
    run = subprocess.run([tf221_python, _JOB, "local", str(tmp_path / "run"), "200", str(tmp_path / "export")],
                         capture_output=True, text=True, env=job_env(), timeout=500, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    trained, evaluated, exported = job_events(run.stdout)
    assert trained["tensorflow"].startswith("2.2") and trained["step"] == 200 and trained["stop"] is None
    assert evaluated["global_step"] == 200 and evaluated["accuracy"] >= 0.9 and evaluated["loss"] < 0.5
    assert exported["accuracy"] >= 0.9 and os.path.isfile(os.path.join(exported["path"], "saved_model.pb"))
    # The committed bwtf checkpoint and Estimator's eval directory, as on 2.15.
    assert (tmp_path / "run" / "ckpt-200" / "MANIFEST.json").is_file()
    assert list((tmp_path / "run" / "eval_validation").glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_one_ps_cluster_trains_through_the_runner_on_tf221(tf221_python, tmp_path):
    """1 ps (bwtf's ps lifecycle: exits 0 after the chief), the chief and a worker."""
    ports = free_ports(3)
    spec = {"ps": [f"localhost:{ports[0]}"], "chief": [f"localhost:{ports[1]}"], "worker": [f"localhost:{ports[2]}"]}
    model_dir = str(tmp_path / "run")
    tasks = {}
    for task_type in ("ps", "worker", "chief"):
        log = open(tmp_path / f"{task_type}.log", "w", encoding="utf-8")
        tasks[task_type] = (subprocess.Popen(
            [tf221_python, _JOB, task_type, "0", model_dir, "300", json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=log, text=True, env=job_env()), log)
    outputs = {}
    for task_type in ("chief", "worker", "ps"):
        process, log = tasks[task_type]
        try:
            outputs[task_type] = process.communicate(timeout=400)[0]
        except subprocess.TimeoutExpired:
            for other, _ in tasks.values():
                other.kill()
            raise
        finally:
            log.close()
        assert process.returncode == 0, (tmp_path / f"{task_type}.log").read_text()[-3000:]
    chief = job_events(outputs["chief"])[-1]
    assert chief["task"] == "chief:0" and chief["step"] == 300
    assert job_events(outputs["worker"])[-1]["task"] == "worker:0"
    assert (tmp_path / "run" / "ckpt-300" / "MANIFEST.json").is_file()
