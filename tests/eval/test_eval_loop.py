"""The continuous evaluator's rules and its history file, without TensorFlow.

A fake "trainer" commits a checkpoint each time the loop sleeps, so the tests
control exactly what the evaluator sees when.
"""
import json

import pytest
from absl.testing import absltest

from bwtf.estimator.evaluation import history as _eval_history
from bwtf.estimator.evaluation import loop as _eval_loop

pytestmark = pytest.mark.timeout(60)


class FakeRun:
    """Checkpoint steps that appear one per sleep; records every evaluation."""

    def __init__(self, upcoming, present=()):
        self.present = list(present)
        self.upcoming = list(upcoming)
        self.evaluated = []
        self.now = 0.0

    def list_intact(self):
        return [(step, f"/run/ckpt-{step}/model.ckpt-{step}") for step in self.present]

    def evaluate(self, step, path):
        self.evaluated.append(step)
        return {"precision_at_1": 0.5, "checkpoint": path, "global_step": step}

    def sleep(self, seconds):
        assert seconds > 0, "the loop must never busy-wait"
        self.now += seconds
        if self.upcoming:
            self.present.append(self.upcoming.pop(0))

    def clock(self):
        return self.now


def _run(fake, tmp_path, final_step=30, idle_timeout_secs=100.0, **kwargs):
    config = _eval_loop.LoopConfig(
        history_path=str(tmp_path / "eval_validation" / "history.jsonl"),
        final_step=final_step, idle_timeout_secs=idle_timeout_secs, poll_secs=5.0)
    return _eval_loop.run_loop(config, fake.list_intact, fake.evaluate,
                               sleep=fake.sleep, clock=fake.clock, **kwargs)


def _history_steps(tmp_path):
    path = tmp_path / "eval_validation" / "history.jsonl"
    return [json.loads(line)["global_step"] for line in path.read_text().splitlines()]


def test_each_checkpoint_is_evaluated_once_then_the_loop_stops_at_the_final_step(tmp_path):
    fake = FakeRun(upcoming=[10, 20, 30, 40])
    outcome = _run(fake, tmp_path)
    assert fake.evaluated == [10, 20, 30]
    assert outcome.reason == "final"
    assert _history_steps(tmp_path) == [10, 20, 30]


def test_an_evaluator_that_fell_behind_takes_the_newest_and_names_the_skipped(tmp_path):
    fake = FakeRun(upcoming=[], present=[10, 20, 30])
    with absltest.mock.patch.object(_eval_loop.logging, "warning") as warning:
        outcome = _run(fake, tmp_path)
    assert fake.evaluated == [30]
    assert outcome.evaluated[0]["skipped_steps"] == [10, 20]
    message = warning.call_args[0][0] % warning.call_args[0][1:]
    assert "[10, 20]" in message and "30" in message


@pytest.mark.parametrize("done, expected", [([10], [20, 30]), ([10, 20, 30], [])])
def test_a_restarted_evaluator_does_not_repeat_work(tmp_path, done, expected):
    for step in done:
        _eval_history.append_record(
            str(tmp_path / "eval_validation" / "history.jsonl"), {"global_step": step})
    fake = FakeRun(upcoming=[20, 30], present=[10])
    outcome = _run(fake, tmp_path)
    assert fake.evaluated == expected
    assert outcome.reason == "final"


def test_without_new_checkpoints_the_loop_gives_up_after_the_idle_timeout(tmp_path):
    fake = FakeRun(upcoming=[])
    outcome = _run(fake, tmp_path, idle_timeout_secs=12.0)
    assert outcome.reason == "idle_timeout"
    assert fake.now == pytest.approx(12.0)  # slept 5 + 5 + 2, never past the timeout


def test_without_a_final_step_the_idle_timeout_ends_the_loop_after_the_last_checkpoint(tmp_path):
    fake = FakeRun(upcoming=[10, 20])
    outcome = _run(fake, tmp_path, final_step=None, idle_timeout_secs=30.0)
    assert fake.evaluated == [10, 20]
    assert outcome.reason == "idle_timeout"


def test_a_checkpoint_pruned_during_its_evaluation_is_not_recorded(tmp_path):
    fake = FakeRun(upcoming=[20, 30], present=[10])
    evaluate = fake.evaluate
    fake.evaluate = lambda step, path: None if step == 10 else evaluate(step, path)
    outcome = _run(fake, tmp_path)
    assert [record["global_step"] for record in outcome.evaluated] == [20, 30]
    assert _history_steps(tmp_path) == [20, 30]


def test_a_truncated_last_history_line_is_ignored_and_repaired(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"global_step": 10}\n{"global_st')
    assert _eval_history.evaluated_steps(_eval_history.read_history(str(path))) == {10}
    _eval_history.append_record(str(path), {"global_step": 20})
    assert [r["global_step"] for r in _eval_history.read_history(str(path))] == [10, 20]


@pytest.mark.parametrize("text, problem", [
    ('{"global_step": 10}\nnot json\n{"global_step": 30}\n', "line 2 is not JSON"),
    ('{"global_step": "ten"}\n', "integer 'global_step'"),
    ('[10]\n', "integer 'global_step'"),
])
def test_a_history_file_edited_into_nonsense_is_refused_with_its_line(tmp_path, text, problem):
    path = tmp_path / "history.jsonl"
    path.write_text(text)
    with pytest.raises(_eval_history.HistoryError, match=problem) as error:
        _eval_history.read_history(str(path))
    assert str(path) in str(error.value)


def test_the_final_checkpoint_is_evaluated_within_a_watch_period_not_a_whole_throttle(tmp_path):
    # Throttle 60 s; the final checkpoint is committed 1 s into the wait.
    fake = FakeRun(upcoming=[30], present=[10])
    config = _eval_loop.LoopConfig(
        history_path=str(tmp_path / "eval_validation" / "history.jsonl"), final_step=30,
        idle_timeout_secs=1000.0, poll_secs=60.0, final_watch_secs=1.0)
    outcome = _eval_loop.run_loop(config, fake.list_intact, fake.evaluate, sleep=fake.sleep,
                                  clock=fake.clock)
    assert outcome.reason == "final" and fake.evaluated == [10, 30]
    assert fake.now == 1.0, "the evaluator idled after the final checkpoint appeared"
