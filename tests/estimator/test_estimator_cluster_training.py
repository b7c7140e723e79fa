"""Real localhost clusters of ``python -m bwtf.estimator.train`` processes."""
import json
import os
import re
import subprocess
import sys

import pytest

from bwtf import ckpt
from estimator_helpers import finish, free_ports, start_train

_SYNTHETIC = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
              "--batch_size=8", "--log_every_steps=10", "--eval_steps=2", "--save_checkpoints_steps=10"]


def _run_cluster(tmp_path, name, flags, ps_count, worker_count=1, tf_config_for_worker=False, timeout=300):
    """Starts ps tasks and workers (worker 0 = chief); returns {task: (exit code, log)}."""
    ports = free_ports(ps_count + worker_count)
    ps_hosts = [f"localhost:{p}" for p in ports[:ps_count]]
    worker_hosts = [f"localhost:{p}" for p in ports[ps_count:]]
    classic = [f"--ps_hosts={','.join(ps_hosts)}", f"--worker_hosts={','.join(worker_hosts)}"]
    tasks = {}
    for index in range(ps_count):
        tasks[f"ps{index}"] = start_train([*flags, *classic, "--job_name=ps", f"--task_index={index}"],
                                          tmp_path / f"{name}-ps{index}.log")
    for index in range(1, worker_count):
        if tf_config_for_worker:
            spec = {"ps": ps_hosts, "chief": worker_hosts[:1], "worker": worker_hosts[1:]}
            tf_config = json.dumps({"cluster": spec, "task": {"type": "worker", "index": index - 1}})
            tasks[f"worker{index}"] = start_train(flags, tmp_path / f"{name}-worker{index}.log", tf_config)
        else:
            tasks[f"worker{index}"] = start_train(
                [*flags, *classic, "--job_name=worker", f"--task_index={index}"], tmp_path / f"{name}-worker{index}.log")
    tasks["chief"] = start_train([*flags, *classic, "--job_name=worker", "--task_index=0"],
                                 tmp_path / f"{name}-chief.log")
    results = {"chief": finish(tasks.pop("chief"), tmp_path / f"{name}-chief.log", timeout)}
    for task, process in tasks.items():
        results[task] = finish(process, tmp_path / f"{name}-{task}.log", 120)
    return results


def _assert_all_exited_cleanly(results):
    for task, (code, log) in results.items():
        assert code == 0, f"{task} exited with {code}:\n{log[-3000:]}"


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_ps_cluster_learns_the_digits(tmp_path, digits_flags):
    """1 ps, the chief and 1 worker (the worker configured through TF_CONFIG) reach 95% precision@1."""
    flags = [*digits_flags, f"--model_dir={tmp_path / 'run'}", "--train_steps=500", "--distribution=ps"]
    results = _run_cluster(tmp_path, "digits", flags, ps_count=1, worker_count=2, tf_config_for_worker=True)
    _assert_all_exited_cleanly(results)
    chief_log = results["chief"][1]
    assert "cluster role chief:0 (from flags)" in chief_log
    # Under no scheduler a worker's role line goes to its full log only; the chief's shows the cluster.
    assert "cluster role worker:0 (from tf_config)" not in results["worker1"][1]
    assert "cluster role worker:0 (from tf_config)" in (tmp_path / "run" / "logs" / "worker-0.log").read_text()
    assert re.search(r"images/s this worker, [\d.]+ images/s job, [\d.]+ steps/s, ETA", chief_log)
    precision = float(re.search(r"final precision@1 ([\d.]+)", chief_log).group(1))
    assert precision >= 0.95, f"precision@1 {precision} on the validation split"
    assert ckpt.latest_intact_checkpoint(str(tmp_path / "run")).step == 500  # exactly --train_steps, however the two workers raced


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoint_from_two_ps_restores_onto_one_ps_and_into_one_process(tmp_path):
    model_dir = str(tmp_path / "run")
    two_ps = _run_cluster(tmp_path, "two-ps", [*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=20"],
                          ps_count=2)
    _assert_all_exited_cleanly(two_ps)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 20

    one_ps = _run_cluster(tmp_path, "one-ps", [*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=40"],
                          ps_count=1)
    _assert_all_exited_cleanly(one_ps)
    assert "resuming from" in one_ps["chief"][1] and "(step 20)" in one_ps["chief"][1]
    assert "done: 40 steps (20 this run)" in one_ps["chief"][1]

    code, log = finish(start_train([*_SYNTHETIC, f"--model_dir={model_dir}", "--train_steps=60",
                                    "--distribution=none"], tmp_path / "single.log"),
                       tmp_path / "single.log", 240)
    assert code == 0, log[-3000:]
    assert "(step 40)" in log and "done: 60 steps (20 this run)" in log
    assert ckpt.latest_intact_checkpoint(model_dir).step == 60


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_collective_workers_learn_the_digits_from_real_data_and_resume(tmp_path, digits_flags, engine):
    """Two MultiWorkerMirroredStrategy workers on the digits archive reach 95% precision@1,
    through tf.estimator or bwtf's runner; a longer rerun resumes both from the checkpoint.

    The chief reads the dataset (its label texts) before training: the strategy
    must already exist then, or TF refuses to configure collective ops.
    """
    model_dir = tmp_path / "run"
    flags = [*digits_flags, f"--model_dir={model_dir}", "--distribution=collective"]
    results = _run_cluster(tmp_path, "collective", [*flags, "--train_steps=500"], ps_count=0, worker_count=2)
    _assert_all_exited_cleanly(results)
    chief_log, worker_log = results["chief"][1], results["worker1"][1]
    for log in (chief_log, worker_log):
        assert "collective strategy: 2 replicas in sync, one per worker" in log
        assert "small_cnn: 61,338 trainable parameters" in log
    expected_engine = "tf.estimator" if engine == "estimator" else "bwtf's runner"
    for log in ("chief.log", "worker-0.log"):
        assert f"engine: {expected_engine}" in (model_dir / "logs" / log).read_text()
    # One update averages both workers' batches: 64 images, so the linear rule gives 0.4 * 64 / 256.
    assert "64 images per update" in chief_log and "peak lr 0.1000" in chief_log
    precision = float(re.search(r"final precision@1 ([\d.]+)", chief_log).group(1))
    assert precision >= 0.95, f"precision@1 {precision} on the validation split"
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 500

    # Both workers restore step 500 (each replica starts from the same values) and step on together.
    rerun = _run_cluster(tmp_path, "resume", [*flags, "--train_steps=540"], ps_count=0, worker_count=2)
    _assert_all_exited_cleanly(rerun)
    assert "(step 500)" in rerun["chief"][1] and "done: 540 steps (40 this run)" in rerun["chief"][1]
    assert re.search(r"Restored \S+/ckpt-500/model.ckpt-500", rerun["worker1"][1]), rerun["worker1"][1][-3000:]
    precision = float(re.search(r"final precision@1 ([\d.]+)", rerun["chief"][1]).group(1))
    assert precision >= 0.95, f"precision@1 {precision} after resuming: the workers did not restore step 500"
    assert ckpt.latest_intact_checkpoint(str(model_dir)).step == 540

    # A warm start: every replica restores the source, or the worker would wait for the chief's initial values.
    flags = [*digits_flags, f"--model_dir={tmp_path / 'warm'}", "--distribution=collective",
             f"--warm_start_from={model_dir}", "--train_steps=40"]
    warm = _run_cluster(tmp_path, "warm", flags, ps_count=0, worker_count=2)
    _assert_all_exited_cleanly(warm)
    for log in (warm["chief"][1], tmp_path / "warm" / "logs" / "worker-0.log"):
        text = log if isinstance(log, str) else log.read_text()
        assert re.search(r"warm start from \S+ckpt-540\S* \(step 540\): restoring (\d+) of \1 variables", text)
    precision = float(re.search(r"final precision@1 ([\d.]+)", warm["chief"][1]).group(1))
    assert precision >= 0.9, f"precision@1 {precision} 40 steps after warm-starting from a 0.95+ model"


def run_eval_json(tmp_path, model_dir):
    log_path = tmp_path / "eval.log"
    process = subprocess.Popen([sys.executable, "-m", "bwtf.estimator.evaluate", f"--model_dir={model_dir}",
                                f"--output_json={tmp_path / 'eval.json'}", "--eval_steps=1"],
                               stdout=open(log_path, "w", encoding="utf-8"), stderr=subprocess.STDOUT,
                               env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"))
    return finish(process, log_path, 300)


def _manifest_step(model_dir, step):
    with open(f"{model_dir}/ckpt-{step}/MANIFEST.json", encoding="utf-8") as f:
        return json.load(f)["step"]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["async", "sync_replicas"])
def test_train_steps_n_ends_with_ckpt_n_however_many_workers_race(tmp_path, mode):
    """Four training tasks on one ps race for the last steps: the run ends with ckpt-N,
    whose name, manifest and stored global_step all say N; a rerun with the same flags
    trains nothing and still ends at N, and a longer rerun ends exactly at its new N
    (the chief trains those 24 steps alone, before the workers' start delay is over)."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    model_dir = str(tmp_path / "run")
    extra = ["--sync_replicas"] if mode == "sync_replicas" else []
    # Tiny steps, checked every step. Workers start 5 s apart (as in train_and_evaluate),
    # so the first run is long enough (about 20 s here; a synchronous step takes four
    # gradients) that they join the chief before its last steps.
    first = 1200 if mode == "async" else 150
    flags = [*_SYNTHETIC, f"--model_dir={model_dir}", "--distribution=ps", "--batch_size=2",
             "--save_checkpoints_steps=100000", *extra]
    for round_index, steps in enumerate((first, first, first + 24)):
        results = _run_cluster(tmp_path, f"race-{round_index}", [*flags, f"--train_steps={steps}"],
                               ps_count=1, worker_count=4, timeout=600)
        _assert_all_exited_cleanly(results)
        if round_index == 0:
            worker_log = (tmp_path / "run" / "logs" / "worker-0.log").read_text()
            assert re.search(r"this task trained [1-9]\d* steps", worker_log), \
                f"worker 0 trained no step before the chief finished:\n{worker_log[-2000:]}"
        latest = ckpt.latest_intact_checkpoint(model_dir)
        assert latest.step == steps, [s.step for s in ckpt.list_checkpoints(model_dir)]
        assert max(s.step for s in ckpt.list_checkpoints(model_dir)) == steps
        assert _manifest_step(model_dir, steps) == steps
        assert tf.train.load_checkpoint(latest.path).get_tensor("global_step") == steps
        assert f"done: {steps} steps" in results["chief"][1]
    # bwtf-eval reports the same step for the checkpoint it evaluated.
    code, log = run_eval_json(tmp_path, model_dir)
    assert code == 0, log[-3000:]
    record = json.loads((tmp_path / "eval.json").read_text())
    last = first + 24
    assert record["global_step"] == last and record["checkpoint"].endswith(f"/ckpt-{last}/model.ckpt-{last}")
