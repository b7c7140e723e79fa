"""Localhost clusters of real TF processes: the fix bwtf exists for.

The ps tasks run in their own mount namespace where model_dir is a read-only
bind mount, so they cannot write a byte of it. bwtf's checkpoints still
succeed (the chief writes everything) and restore onto a different number of
ps and into a single process; TF's default Estimator saver fails there.
"""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from bwtf import ckpt

import ckpt_cluster


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _emb(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return reader.get_tensor("emb"), reader.get_variable_to_shape_map()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_gathered_checkpoints_with_readonly_ps_restore_on_other_layouts(
        tmp_path, local_cluster, readonly_for_ps):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    two_ps = local_cluster(2, readonly_dir=str(model_dir))
    run = two_ps.run_chief(f"--model_dir={model_dir}", "--max_steps=20", "--save_steps=10")
    assert run.returncode == 0, run.stderr[-3000:]
    two_ps.close()
    ref = ckpt.latest_intact_checkpoint(str(model_dir))
    assert ref.step == 20
    # Stock TF readers see the same checkpoint.
    assert tf.train.latest_checkpoint(str(model_dir)) == ref.path
    emb_20, shapes = _emb(ref.path)
    assert shapes["emb"] == [64, 8] and "kernel/Adagrad" in shapes

    # N=2 ps -> M=1 ps: training resumes from step 20 with the saved values.
    progress = tmp_path / "one_ps.json"
    one_ps = local_cluster(1, readonly_dir=str(model_dir))
    run = one_ps.run_chief(f"--model_dir={model_dir}", "--max_steps=30",
                           f"--progress={progress}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _read_json(progress)["start_step"] == 20
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 30

    # -> a single process, which also evaluates the result (what an evaluation
    # job does: Estimator.evaluate restores through the GatheredSaver).
    progress, result = tmp_path / "local.json", tmp_path / "local_result.json"
    run = ckpt_cluster.run_local(f"--model_dir={model_dir}", "--max_steps=35", "--evaluate",
                             f"--progress={progress}", f"--result={result}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _read_json(progress)["start_step"] == 30
    assert _read_json(result)["eval_step"] == 35
    emb_35, _ = _emb(ckpt.latest_intact_checkpoint(str(model_dir)).path)
    assert emb_35.shape == emb_20.shape and not np.array_equal(emb_35, emb_20)

    # Warm start of a new model from it (stock WarmStartSettings reads the
    # TF state file and the V2 files).
    progress = tmp_path / "warm.json"
    run = ckpt_cluster.run_local(f"--model_dir={tmp_path / 'warm'}", "--max_steps=1",
                             f"--warm_start_from={model_dir}", f"--progress={progress}")
    assert run.returncode == 0, run.stderr[-3000:]
    warm = _read_json(progress)
    assert warm["start_step"] == 0
    assert warm["emb_sum"] == pytest.approx(float(np.sum(emb_35)), rel=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not hasattr(tf, "estimator"), reason="TensorFlow's own sharded saver runs through tf.estimator, "
                    "which 2.21 does not have (bwtf's runner makes no stock saver)")
def test_tf_default_saver_fails_when_ps_cannot_write(tmp_path, local_cluster, readonly_for_ps):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    cluster = local_cluster(2, readonly_dir=str(model_dir))
    run = cluster.run_chief(f"--model_dir={model_dir}", "--max_steps=20", "--saver=default")
    assert run.returncode != 0
    assert "Read-only file system" in run.stderr
    assert tf.train.latest_checkpoint(str(model_dir)) is None


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_saves_current_step_exits_requeue_and_resume_loses_no_step(tmp_path):
    model_dir = tmp_path / "model"
    progress = tmp_path / "progress.json"
    proc = subprocess.Popen(
        [sys.executable, ckpt_cluster.TASK, "local", f"--model_dir={model_dir}",
         "--max_steps=100000", "--save_steps=1000", "--sleep_per_step=0.05",
         f"--progress={progress}", f"--result={tmp_path / 'result.json'}"],
        env=ckpt_cluster.task_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert ckpt_cluster.wait_for(
            lambda: progress.exists() and _read_json(progress).get("last_trained_step", 0) >= 15,
            timeout=120), "training never reached step 15"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ckpt.EXIT_REQUEUE, stderr[-3000:]
    stopped_at = _read_json(progress)["last_trained_step"]
    result = _read_json(tmp_path / "result.json")
    assert result == {"step": stopped_at, "stop_reason": "SIGTERM"}
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == stopped_at

    resumed = tmp_path / "resumed.json"
    run = ckpt_cluster.run_local(f"--model_dir={model_dir}", f"--max_steps={stopped_at + 3}",
                             f"--progress={resumed}")
    assert run.returncode == 0, run.stderr[-3000:]
    steps_lost = stopped_at - _read_json(resumed)["start_step"]
    assert steps_lost == 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_walltime_margin_stops_with_requeue(tmp_path):
    model_dir = tmp_path / "model"
    result = tmp_path / "result.json"
    # The margin starts ~12 s from now: training stops by itself, unsignalled.
    run = ckpt_cluster.run_local(
        f"--model_dir={model_dir}", "--max_steps=100000", "--save_steps=1000",
        "--sleep_per_step=0.05", f"--result={result}",
        env={"BWTF_WALLTIME_END": str(time.time() + 120 + 12)})
    assert run.returncode == ckpt.EXIT_REQUEUE, run.stderr[-3000:]
    assert _read_json(result)["stop_reason"] == "walltime"
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == _read_json(result)["step"]

