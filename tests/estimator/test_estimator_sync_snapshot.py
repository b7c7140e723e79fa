"""One-step checkpoints under --sync_replicas, on a real localhost cluster (2 ps, the chief, a worker).

``sync_snapshot_job.py`` trains a model in which every update moves every
element of every variable by the same amount, through bwtf's own model_fn
wrappers and runner, and the chief saves every step in the background while
the worker goes on. SyncReplicasOptimizer's chief queue runner applies each
aggregated update; unless that update runs behind the update gate, a snapshot
can land in its middle. Every checkpoint must hold one step: every element of
every variable equal (spread 0) and equal to the value a one-process replay
gives after the number of updates in its stored global_step, which equals the
step in its name and manifest; and the run ends exactly at ckpt-N.
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt
from estimator_helpers import free_ports, job_env, job_events

_JOB = str(pathlib.Path(__file__).with_name("sync_snapshot_job.py"))
_STEPS = 30


def _replay(python, precision):
    run = subprocess.run([python, _JOB, "replay", str(_STEPS), precision], capture_output=True, text=True,
                         env=job_env(), timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    values = job_events(run.stdout)[-1]["values"]
    assert len(set(values)) == len(values), "every update must change the value"
    return values


def _train(python, tmp_path, precision):
    """Runs the cluster; returns (model_dir, {task: stdout})."""
    ports = free_ports(4)
    spec = {"ps": [f"localhost:{p}" for p in ports[:2]], "chief": [f"localhost:{ports[2]}"],
            "worker": [f"localhost:{ports[3]}"]}
    model_dir = str(tmp_path / "run")
    tasks = {}
    for task_type, index in (("ps", 0), ("ps", 1), ("worker", 0), ("chief", 0)):
        name = f"{task_type}{index}"
        log = open(tmp_path / f"{name}.log", "w", encoding="utf-8")
        tasks[name] = (subprocess.Popen(
            [python, _JOB, task_type, str(index), model_dir, str(_STEPS), json.dumps(spec), precision],
            stdout=subprocess.PIPE, stderr=log, text=True, env=job_env()), log)
    outputs = {}
    try:
        for name in ("chief0", "worker0", "ps0", "ps1"):
            process, log = tasks[name]
            outputs[name] = process.communicate(timeout=240)[0]
            log.close()
            assert process.returncode == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for process, _ in tasks.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    return model_dir, outputs


def _check_one_step(model_dir, values):
    """Every checkpoint holds one step; returns the steps of the checkpoints found."""
    steps, torn = [], []
    for info in ckpt.list_checkpoints(model_dir):
        assert info.intact, info
        reader = tf.train.load_checkpoint(os.path.join(info.directory, f"model.ckpt-{info.step}"))
        stored_step = int(reader.get_tensor("global_step"))
        with open(os.path.join(model_dir, f"ckpt-{info.step}", "MANIFEST.json"), encoding="utf-8") as f:
            manifest_step = json.load(f)["step"]
        elements = np.concatenate([reader.get_tensor(name).ravel() for name in sorted(
            reader.get_variable_to_shape_map()) if name.startswith("model/v") and "/" not in name[len("model/"):]])
        spread = float(elements.max() - elements.min())
        if not (stored_step == info.step == manifest_step and spread == 0 and elements[0] == values[stored_step]):
            torn.append((info.step, stored_step, manifest_step, spread,
                         sorted(set(values.index(v) if v in values else v for v in elements.tolist()))))
        steps.append(info.step)
    assert not torn, f"checkpoints holding more than one step (name, stored, manifest, spread, steps held): {torn}"
    return steps


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("tensorflow", ["2.15", "2.21"])
def test_sync_replicas_checkpoints_hold_one_step(tmp_path, request, tensorflow):
    """fp16: the dynamic loss scaling's own variables are updated inside the gate too.
    On 2.21 the same model_fn runs through bwtf's runner without tf.estimator."""
    python = request.getfixturevalue("tf215_python" if tensorflow == "2.15" else "tf221_python")
    values = _replay(python, "fp16")
    model_dir, outputs = _train(python, tmp_path, "fp16")
    steps = _check_one_step(model_dir, values)
    assert len(steps) >= _STEPS // 2, steps  # many saves while the worker trained
    # --train_steps=N ends exactly at ckpt-N, and every task ends (the chief promptly).
    assert max(steps) == _STEPS and ckpt.latest_intact_checkpoint(model_dir).step == _STEPS
    chief, worker = job_events(outputs["chief0"])[-1], job_events(outputs["worker0"])[-1]
    assert chief["task"] == "chief:0" and worker["task"] == "worker:0"
    assert chief["tensorflow"].startswith(tensorflow)
