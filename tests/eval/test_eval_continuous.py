"""bwtf-eval --continuous on real checkpoints: each once, skips named, stops by itself.

The checkpoints of the shared training run are committed into a fresh
model_dir one at a time (copied, then renamed into place as the chief does)
each time the evaluator waits, so what it sees when is deterministic.
"""
import json
import os
import shutil

import pytest
from absl import flags
from eval_helpers import CHECKPOINT_STEPS, TRAIN_STEPS, run_module
from tensorboard.backend.event_processing import event_accumulator

from bwtf.estimator import _flags
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.evaluation import runner as evaluate

pytestmark = pytest.mark.timeout(300)


class CheckpointFeeder:
    """Commits the next checkpoint of ``source`` into ``target`` on each sleep."""

    def __init__(self, source, target, steps):
        self.source, self.target, self.pending = source, target, list(steps)
        os.makedirs(target, exist_ok=True)

    def sleep(self, seconds):
        assert seconds > 0
        if not self.pending:
            return
        step = self.pending.pop(0)
        staging = os.path.join(self.target, f".staging-{step}")
        shutil.copytree(os.path.join(self.source, f"ckpt-{step}"), staging)
        os.rename(staging, os.path.join(self.target, f"ckpt-{step}"))


def _job(trained_run, model_dir):
    """The EvalJob bwtf-eval would build from the run's model flags."""
    flag_values = flags.FlagValues()
    model_flags = _flags.define_model_flags(flag_values)
    data_flags = _flags.define_data_flags(flag_values)
    flag_values(["prog", *trained_run.model_flags])
    setup = _eval_setup.model_setup(model_flags.values(), data_flags.values(), model_dir,
                                    "validation", 64)
    return evaluate.EvalJob(model_dir, setup.dataset, setup.train, 64)


def _precision_steps(model_dir):
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(model_dir, "eval_validation"), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars("precision_at_1")]


def test_each_new_checkpoint_is_evaluated_exactly_once_then_the_evaluator_exits(
        trained_run, tmp_path):
    model_dir = str(tmp_path / "watched")
    feeder = CheckpointFeeder(trained_run.model_dir, model_dir, CHECKPOINT_STEPS)
    job = _job(trained_run, model_dir)
    outcome = evaluate.evaluate_continuously(
        job, final_step=TRAIN_STEPS, idle_timeout_secs=60, poll_secs=0.01, sleep=feeder.sleep)
    assert outcome.reason == "final"
    assert [record["global_step"] for record in outcome.evaluated] == list(CHECKPOINT_STEPS)
    assert all(record["skipped_steps"] == [] for record in outcome.evaluated)
    assert _precision_steps(model_dir) == list(CHECKPOINT_STEPS)
    history = os.path.join(model_dir, "eval_validation", "history.jsonl")
    with open(history) as stream:
        assert [json.loads(line)["global_step"] for line in stream] == list(CHECKPOINT_STEPS)

    restarted = evaluate.evaluate_continuously(
        job, final_step=TRAIN_STEPS, idle_timeout_secs=60, poll_secs=0.01, sleep=feeder.sleep)
    assert restarted.reason == "final" and restarted.evaluated == []
    assert _precision_steps(model_dir) == list(CHECKPOINT_STEPS)


def test_the_command_catches_up_with_the_newest_names_the_skipped_and_exits(
        trained_run, copy_run, tmp_path):
    model_dir = copy_run()
    output = tmp_path / "last.json"
    result = run_module("bwtf.estimator.evaluate", *trained_run.model_flags,
                        f"--model_dir={model_dir}", "--continuous",
                        f"--train_steps={TRAIN_STEPS}", f"--output_json={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping checkpoint steps [20, 40]" in result.stderr
    assert json.loads(output.read_text())["global_step"] == 60
    assert _precision_steps(model_dir) == [60]


def test_an_evaluator_without_new_checkpoints_gives_up_and_says_so(trained_run, tmp_path):
    model_dir = str(tmp_path / "never_trained")
    result = run_module("bwtf.estimator.evaluate", *trained_run.model_flags,
                        f"--model_dir={model_dir}", "--continuous", "--eval_timeout_secs=1",
                        "--eval_throttle_secs=1")
    assert result.returncode == 1
    assert "no new checkpoint for" in result.stderr
