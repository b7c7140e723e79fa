"""The evaluator's history file: one JSON line per evaluated checkpoint.

A restarted evaluator reads it to know which checkpoints it has already
evaluated, so that it never repeats work. It lives next to the eval event files
(``<model_dir>/eval_<split>/history.jsonl``), one file per split, because the
same checkpoint is evaluated once per split.

Each line is one complete JSON object written with a single ``write`` and
fsynced, so a crash can only leave a truncated *last* line; that line is
ignored with a warning (its checkpoint is evaluated again). Any other line that
does not parse is an error naming the file and the line: the file was edited by
hand, and guessing what it meant could silently skip a checkpoint.

Deliberately left out: locking. One evaluator per (model_dir, split) is the
contract; two would each evaluate every checkpoint once.
"""
import json
import os

from absl import logging

import bwtf

HISTORY_NAME = "history.jsonl"


class HistoryError(bwtf.UserError, ValueError):
    """The history file exists but is not what this module writes."""


def eval_dir(model_dir, split):
    """Where Estimator writes the eval events of ``split``, and where the history lives."""
    return os.path.join(model_dir, f"eval_{split}")


def history_path(model_dir, split):
    return os.path.join(eval_dir(model_dir, split), HISTORY_NAME)


def _parse_line(path, number, line, is_last):
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        if is_last and not line.endswith("\n"):
            logging.warning(
                "ignoring the truncated last line %d of %s (an interrupted write); its "
                "checkpoint will be evaluated again", number, path)
            return None
        raise HistoryError(
            f"{path} line {number} is not JSON ({error.msg}); expected one JSON object per "
            "line as written by bwtf-eval. Fix or delete the line (a deleted line means "
            "that checkpoint is evaluated again).") from None
    if not isinstance(record, dict) or not isinstance(record.get("global_step"), int):
        raise HistoryError(
            f"{path} line {number} is {line.strip()[:80]!r}; expected a JSON object with an "
            "integer 'global_step'. Fix or delete the line.")
    return record


def read_history(path):
    """The records in ``path`` in file order; [] when the file does not exist."""
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.readlines()
    except FileNotFoundError:
        return []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse_line(path, number, line, is_last=number == len(lines))
        if record is not None:
            records.append(record)
    return records


def evaluated_steps(records):
    return {record["global_step"] for record in records}


def append_record(path, record):
    """Appends ``record`` as one line and fsyncs it before returning."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    line = json.dumps(record, sort_keys=True) + "\n"
    _drop_truncated_tail(path)
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(line)
        stream.flush()
        os.fsync(stream.fileno())


def _drop_truncated_tail(path):
    """Cuts an unterminated last line so the next record starts on its own line."""
    try:
        with open(path, "rb+") as stream:
            data = stream.read()
            if not data or data.endswith(b"\n"):
                return
            stream.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        return
