"""The continuous evaluator's loop, free of TensorFlow so its rules can be tested alone.

The rules:

* Each intact checkpoint is evaluated at most once, and only checkpoints newer
  than the newest one already evaluated are considered (the history file
  survives restarts, so a restarted evaluator does not repeat work).
* When several new checkpoints are waiting, the evaluator has fallen behind:
  it evaluates the newest and logs the steps it skipped (they are also kept in
  that checkpoint's history record under ``skipped_steps``).
* It stops by itself, never polling forever:
    - ``final``: it has evaluated a checkpoint at or past ``final_step``
      (``--train_steps``), now or in an earlier run;
    - ``idle_timeout``: no new checkpoint for ``idle_timeout_secs``.
* Between evaluations it waits ``poll_secs`` (``--eval_throttle_secs``), but
  with ``final_watch_secs`` it looks for the final checkpoint that often while
  waiting and evaluates it at once: the evaluator task ends seconds after
  training, not a whole throttle period later.

Deliberately left out: how a checkpoint is evaluated or listed (callables passed
in by ``runner``; ``evaluate_checkpoint`` returns None for a checkpoint
that vanished meanwhile) and retrying a failed evaluation (errors propagate).
"""
import dataclasses
import time
from typing import Callable, Optional, Sequence, Tuple

from absl import logging

from bwtf.estimator.evaluation import history as _eval_history


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    history_path: str
    final_step: Optional[int] = None
    idle_timeout_secs: float = 3600.0
    poll_secs: float = 10.0
    final_watch_secs: Optional[float] = None  # None: sleep whole poll periods


@dataclasses.dataclass
class LoopOutcome:
    reason: str  # "final" or "idle_timeout"
    evaluated: list  # the records written by this run, in order


def pending_checkpoints(intact, done_steps):
    """The (step, path) pairs newer than every evaluated step, oldest first."""
    newest_done = max(done_steps, default=-1)
    return [(step, path) for step, path in sorted(intact) if step > newest_done]


def _reached_final(steps, final_step):
    return final_step is not None and any(step >= final_step for step in steps)


def _evaluate_newest(pending, evaluate_checkpoint, history_path):
    step, path = pending[-1]
    skipped = [skipped_step for skipped_step, _ in pending[:-1]]
    if skipped:
        logging.warning(
            "evaluator fell behind: skipping checkpoint steps %s and evaluating the newest, "
            "step %d", skipped, step)
    result = evaluate_checkpoint(step, path)
    if result is None:
        return None  # it vanished (pruned) while being evaluated; nothing to record
    # The step actually restored (bwtf.ckpt falls back when the listed one
    # vanished); the caller marks both as done.
    record = dict(result, skipped_steps=skipped)
    record.setdefault("global_step", step)
    _eval_history.append_record(history_path, record)
    return record


def _wait(config, list_intact, seconds, sleep):
    """Sleeps ``seconds``; with ``final_watch_secs``, in slices, until the final checkpoint is there."""
    if not config.final_watch_secs or config.final_step is None:
        sleep(seconds)
        return
    remaining = seconds
    while remaining > 0:
        part = min(config.final_watch_secs, remaining)
        sleep(part)
        remaining -= part
        if _reached_final([step for step, _ in list_intact()], config.final_step):
            return


def run_loop(
    config: LoopConfig,
    list_intact: Callable[[], Sequence[Tuple[int, str]]],
    evaluate_checkpoint: Callable[[int, str], dict],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> LoopOutcome:
    """Evaluates new checkpoints until one of the stop rules holds."""
    done = _eval_history.evaluated_steps(_eval_history.read_history(config.history_path))
    evaluated = []
    last_progress = clock()
    while True:
        if _reached_final(done, config.final_step):
            logging.info("final step %d evaluated; the evaluator stops", config.final_step)
            return LoopOutcome("final", evaluated)
        pending = pending_checkpoints(list_intact(), done)
        if pending:
            record = _evaluate_newest(pending, evaluate_checkpoint, config.history_path)
            # Done even when it vanished: this run never tries that step again.
            done.add(pending[-1][0])
            if record is not None:
                done.add(record["global_step"])
            if record is not None:
                evaluated.append(record)
            last_progress = clock()
            continue
        idle = clock() - last_progress
        if idle >= config.idle_timeout_secs:
            logging.warning(
                "no new checkpoint for %.0f s (--eval_timeout_secs); the evaluator stops",
                idle)
            return LoopOutcome("idle_timeout", evaluated)
        _wait(config, list_intact, min(config.poll_secs, config.idle_timeout_secs - idle), sleep)
