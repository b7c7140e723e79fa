"""bwtf's runner (BWTF_RUNNER=bwtf) on TensorFlow 2.15, against the tf.estimator path it stands in for.

The same programs, flags and checkpoints: training resumes and stops at
--train_steps, SIGTERM saves and exits 75, a checkpoint written by either
engine resumes in the other, both evaluate a checkpoint to the same metrics,
and small_cnn learns the digits through the runner locally and in a 1-ps
cluster.
"""
import re
import signal
import time

import pytest

import bwtf
from bwtf import ckpt
from bwtf.estimator.runner import selection
from bwtf.estimator.runner import spec
from estimator_helpers import finish, free_ports, start_train

_SYNTHETIC = ["--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
              "--batch_size=8", "--log_every_steps=10", "--eval_steps=2", "--save_checkpoints_steps=10"]


@pytest.fixture
def use_runner(clean_cluster_env):
    clean_cluster_env.setenv(selection.ENV_VARIABLE, "bwtf")
    return clean_cluster_env


@pytest.mark.parametrize("value, expected", [
    ("bwtf", True), ("BWTF", True), ("", not spec.HAS_TF_ESTIMATOR), (None, not spec.HAS_TF_ESTIMATOR),
    # Where tf.estimator is missing, insisting on it is bad input.
    ("estimator", False if spec.HAS_TF_ESTIMATOR else "BWTF_RUNNER=estimator but TensorFlow 2.21.0 has no "
     "tf.estimator \\(removed in 2.16\\); unset BWTF_RUNNER or set it to bwtf")])
def test_the_engine_is_chosen_by_bwtf_runner(value, expected):
    environ = {} if value is None else {selection.ENV_VARIABLE: value}
    if isinstance(expected, str):
        with pytest.raises(selection.RunnerSelectionError, match=expected) as error:
            selection.use_bwtf_runner(environ)
        assert error.value.exit_code == bwtf.EXIT_USAGE
    else:
        assert selection.use_bwtf_runner(environ) is expected


def test_an_unknown_engine_is_bad_input():
    with pytest.raises(selection.RunnerSelectionError, match=r"BWTF_RUNNER='keras' is not an engine") as error:
        selection.use_bwtf_runner({selection.ENV_VARIABLE: "keras"})
    assert error.value.exit_code == bwtf.EXIT_USAGE


def test_bwtf_runs_own_spec_types_keep_estimators_rules():
    import tensorflow as tf

    assert (spec._ModeKeys.TRAIN, spec._ModeKeys.EVAL, spec._ModeKeys.PREDICT) == ("train", "eval", "infer")
    if spec.HAS_TF_ESTIMATOR:
        assert spec.ModeKeys is tf.estimator.ModeKeys and spec.EstimatorSpec is tf.estimator.EstimatorSpec
    with tf.Graph().as_default():
        loss = tf.constant(1.0)
        with pytest.raises(ValueError, match="TRAIN mode needs loss and train_op"):
            spec._EstimatorSpec("train", loss=loss)
        with pytest.raises(TypeError, match="must be a \\(value, update_op\\) pair"):
            spec._EstimatorSpec("eval", loss=loss, eval_metric_ops={"m": loss})
        built = spec._EstimatorSpec("eval", loss=loss)._replace(eval_metric_ops={"m": (loss, loss)})
        assert built.mode == "eval" and built.scaffold is not None and built.training_hooks == ()


def test_runner_resumes_and_stops_at_train_steps(train_flags, use_runner, tmp_path):
    from bwtf.estimator.training import task as train

    common = [*_SYNTHETIC, f"--model_dir={tmp_path}", "--log_every_steps=2"]
    assert train.run_task(train_flags(*common, "--train_steps=4")) == 0
    assert ckpt.latest_intact_checkpoint(str(tmp_path)).step == 4
    assert train.run_task(train_flags(*common, "--train_steps=8")) == 0
    assert ckpt.latest_intact_checkpoint(str(tmp_path)).step == 8
    # Already there: nothing trains, nothing new is written.
    before = sorted(p.name for p in tmp_path.iterdir())
    assert train.run_task(train_flags(*common, "--train_steps=8")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    from bwtf.estimator.evaluation import events

    tags = set(events.read_scalars(str(tmp_path), str(tmp_path)))
    assert {"loss", "global_step/sec", "learning_rate", "train_precision_at_1",
            "throughput/images_per_sec"} <= tags


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not spec.HAS_TF_ESTIMATOR, reason="moves a run between the runner and tf.estimator, which 2.21 "
                    "does not have; test_estimator_tf221 moves checkpoints between 2.15 and 2.21")
def test_checkpoints_move_between_the_runner_and_the_estimator(clean_cluster_env, tmp_path):
    """A run started by one engine resumes in the other, both ways, from the verified checkpoint."""
    model_dir = tmp_path / "run"
    for engine, steps in (("bwtf", 10), ("estimator", 20), ("bwtf", 30)):
        clean_cluster_env.setenv(selection.ENV_VARIABLE, engine)
        log_path = tmp_path / f"{engine}-{steps}.log"
        code, log = finish(start_train([*_SYNTHETIC, f"--model_dir={model_dir}", f"--train_steps={steps}"],
                                       log_path), log_path, 240)
        assert code == 0, log[-3000:]
        assert ckpt.latest_intact_checkpoint(str(model_dir)).step == steps
        if steps > 10:
            assert f"(step {steps - 10})" in log and f"done: {steps} steps (10 this run)" in log, log[-3000:]


def _evaluate(job, engine, monkeypatch):
    from bwtf.estimator.evaluation import runner as evaluation

    monkeypatch.setenv(selection.ENV_VARIABLE, engine)
    return evaluation.evaluate_once(job)


@pytest.mark.skipif(not spec.HAS_TF_ESTIMATOR, reason="compares the runner with tf.estimator, which 2.21 does not have")
def test_the_runner_and_the_estimator_evaluate_a_checkpoint_alike(train_flags, digits_flags, clean_cluster_env,
                                                                  tmp_path):
    import dataclasses

    from bwtf.estimator.training import task as train
    from bwtf.estimator.evaluation import runner as evaluation
    from bwtf.estimator.training import task

    values = train_flags(*digits_flags, f"--model_dir={tmp_path}", "--train_steps=30")
    assert train.run_task(values) == 0
    job = task._build_job(values, task._resolve_role(values["cluster"], "none"))
    eval_job = evaluation.EvalJob(str(tmp_path), job.data, dataclasses.replace(job.train, checkpoint_device=None), 64)
    by_estimator = _evaluate(eval_job, "estimator", clean_cluster_env)
    by_runner = _evaluate(eval_job, "bwtf", clean_cluster_env)
    assert by_runner["num_examples"] == by_estimator["num_examples"] == 355
    assert by_runner["global_step"] == by_estimator["global_step"] == 30
    for metric in ("precision_at_1", "precision_at_5", "loss"):
        assert by_runner[metric] == pytest.approx(by_estimator[metric], rel=1e-5, abs=1e-6), metric
    from bwtf.estimator.evaluation import events

    written = events.read_scalars(str(tmp_path), str(tmp_path / "eval_validation"))
    assert {"precision_at_1", "precision_at_5", "cross_entropy", "loss", "num_examples"} <= set(written)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_makes_the_runner_save_and_exit_for_requeue(use_runner, tmp_path):
    log_path = tmp_path / "train.log"
    process = start_train([*_SYNTHETIC, f"--model_dir={tmp_path / 'run'}", "--train_steps=1000000"], log_path)
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline and not list((tmp_path / "run").glob("ckpt-*")):
        time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    code, log = finish(process, log_path, 120)
    assert code == ckpt.EXIT_REQUEUE, log[-3000:]
    latest = ckpt.latest_intact_checkpoint(str(tmp_path / "run"))
    assert latest is not None and latest.step > 10


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_runner_learns_the_digits_in_one_process(use_runner, digits_flags, tmp_path):
    """Same flags and band as the Estimator path's cluster tests: 95% precision@1 on validation."""
    code, log = finish(start_train([*digits_flags, f"--model_dir={tmp_path / 'run'}", "--train_steps=500"],
                                   tmp_path / "train.log"), tmp_path / "train.log", 500)
    assert code == 0, log[-3000:]
    precision = float(re.search(r"final precision@1 ([\d.]+)", log).group(1))
    assert precision >= 0.95, f"precision@1 {precision} on the validation split"
    assert "Saving dict for global step 500:" in log


def _one_ps_cluster(flags, tmp_path, chief_timeout):
    """1 ps, the chief and 1 worker on localhost with ``flags``; {task: (code, log)}, every code 0."""
    ports = free_ports(3)
    hosts = [f"--ps_hosts=localhost:{ports[0]}", f"--worker_hosts=localhost:{ports[1]},localhost:{ports[2]}"]
    names = {"ps": ["--job_name=ps", "--task_index=0"], "worker": ["--job_name=worker", "--task_index=1"],
             "chief": ["--job_name=worker", "--task_index=0"]}
    tasks = {name: start_train([*flags, *hosts, *extra], tmp_path / f"{name}.log") for name, extra in names.items()}
    results = {"chief": finish(tasks.pop("chief"), tmp_path / "chief.log", chief_timeout)}
    for name, process in tasks.items():
        results[name] = finish(process, tmp_path / f"{name}.log", 120)
    for name, (code, log) in results.items():
        assert code == 0, f"{name} exited with {code}:\n{log[-3000:]}"
    return results


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_ps_cluster_learns_the_digits_through_the_runner(use_runner, digits_flags, tmp_path):
    """1 ps, the chief and 1 worker, all through the runner; the ps exits 0 when the chief is done."""
    results = _one_ps_cluster([*digits_flags, f"--model_dir={tmp_path / 'run'}", "--train_steps=500",
                               "--distribution=ps"], tmp_path, chief_timeout=500)
    chief_log = results["chief"][1]
    assert "cluster role chief:0 (from flags)" in chief_log
    precision = float(re.search(r"final precision@1 ([\d.]+)", chief_log).group(1))
    assert precision >= 0.95, f"precision@1 {precision} on the validation split"
    assert ckpt.latest_intact_checkpoint(str(tmp_path / "run")).step >= 500


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sync_replicas_trains_through_the_runner(use_runner, tmp_path):
    """--sync_replicas: the optimizer's hooks come from model_fn; every task exits 0, the ps too."""
    _one_ps_cluster([*_SYNTHETIC, f"--model_dir={tmp_path / 'run'}", "--train_steps=20", "--sync_replicas"],
                    tmp_path, chief_timeout=400)
    assert "distribution=ps sync" in (tmp_path / "run" / "logs" / "chief.log").read_text()
    assert ckpt.latest_intact_checkpoint(str(tmp_path / "run")).step == 20


def test_the_runner_calls_input_fn_and_model_fn_as_the_estimator_does(tmp_path):
    """Only the arguments a function names: a ``(*args, **kwargs)`` wrapper gets none, as under Estimator;
    ``steps`` bounds the batches of an evaluation; export writes a loadable SavedModel."""
    import runner_job
    import tensorflow as tf

    from bwtf.estimator.runner import engine

    model_dir = str(tmp_path / "run")
    runner = engine.Runner(runner_job.model_fn, engine.RunConfig(model_dir=model_dir, log_step_count_steps=None),
                           params={"save_steps": 10})
    ckpt.take_ownership(model_dir)
    runner.train(runner_job.input_fn, max_steps=20)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 20

    def wrapped(*args, **kwargs):
        assert not args and not kwargs
        return runner_job.input_fn(spec.ModeKeys.EVAL)

    everything = runner.evaluate(wrapped, name="all")
    two_batches = runner.evaluate(wrapped, steps=2, name="two")
    assert everything["global_step"] == two_batches["global_step"] == 20
    assert set(everything) == {"accuracy", "loss", "global_step"}
    # 512 examples in batches of 64: the whole split differs from its first two batches.
    assert everything["loss"] != pytest.approx(two_batches["loss"], rel=1e-6)
    path = runner.export_saved_model(str(tmp_path / "export"), runner_job._serving_input)
    loaded = tf.saved_model.load(path)
    points, _ = runner_job._data()
    assert loaded.signatures["serving_default"](points=tf.constant(points[:3]))["classes"].shape == (3,)


def test_a_warm_start_source_is_read_once_and_evaluations_in_one_second_all_stay(tmp_path):
    """As under Estimator: once the run has a checkpoint of its own, a later train() resumes from it and
    never reads the warm-start source again (here deleted meanwhile); three evaluations written within
    one second keep all three points in eval_<name> (a new event file each time would truncate)."""
    import shutil

    import runner_job
    import tensorflow as tf

    from bwtf.estimator.runner import engine

    source = str(tmp_path / "source")
    ckpt.take_ownership(source)
    engine.Runner(runner_job.model_fn, engine.RunConfig(model_dir=source, log_step_count_steps=None),
                  params={"save_steps": 10}).train(runner_job.input_fn, max_steps=10)
    source_prefix = ckpt.latest_intact_checkpoint(source).path
    model_dir = str(tmp_path / "run")
    ckpt.take_ownership(model_dir)
    runner = engine.Runner(runner_job.model_fn, engine.RunConfig(model_dir=model_dir, log_step_count_steps=None),
                           params={"save_steps": 10}, warm_start_from=spec.WarmStartSettings(source_prefix))
    runner.train(runner_job.input_fn, max_steps=10)
    shutil.rmtree(source)
    runner.train(runner_job.input_fn, max_steps=20)
    assert ckpt.latest_intact_checkpoint(model_dir).step == 20
    for _ in range(3):
        runner.evaluate(lambda: runner_job.input_fn(spec.ModeKeys.EVAL), steps=1, name="burst")
    steps = [event.step for path in (tmp_path / "run" / "eval_burst").iterdir()
             for event in tf.compat.v1.train.summary_iterator(str(path)) if event.summary.value]
    assert steps == [20, 20, 20]
