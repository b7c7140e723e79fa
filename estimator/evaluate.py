"""`bwtf-eval` (``python -m bwtf.estimator.evaluate``): evaluate checkpoints on a split.

One shot, the newest intact checkpoint (or ``--checkpoint``)::

    bwtf-eval --model_dir=runs/r50 [--split=validation] [--data_dir=~/tfds] \\
        --output_json=runs/r50/eval.json

The model, its image size and class list, the dataset and its split come from
the run record ``<model_dir>/run.json`` that bwtf-train writes; ``--split`` and
``--data_dir`` override the recorded ones, and a model or dataset flag that
contradicts the record is refused naming both values. A dataset whose classes
are the record's in another order, or a subset of them, is evaluated with its
labels mapped onto the model's (one log line says so); any other class list is
refused. A model_dir written before records needs the training flags, as
before (``--model``, ``--image_size``, ``--data_dir``, ``--dataset``).

prints one JSON object and writes it to ``--output_json``: ``precision_at_1``,
``precision_at_5``, ``loss``, ``global_step``, ``checkpoint``, ``num_examples``
(counted while evaluating: the whole split, exactly once) and ``split``.

Continuous (``--continuous``, also what the ``evaluator`` task of a training
job runs): every new intact checkpoint is evaluated once; when several are
waiting the newest is taken and the skipped steps are logged; the evaluator
stops by itself after the checkpoint at ``--train_steps``, or after
``--eval_timeout_secs`` without a new checkpoint. Results are appended to
``<model_dir>/eval_<split>/history.jsonl``, which a restarted evaluator reads
to skip what is done; ``--output_json`` then holds the last result.

Whatever cluster wrote the checkpoint, this runs in one CPU process: see
``bwtf.estimator.evaluation.single_process``. A checkpoint of another model or class count is refused
with a message naming the first variable that differs.

The library (also what the evaluator task of ``bwtf-train`` runs) is
``bwtf.estimator.evaluation.runner``.

Deliberately left out: evaluating on several processes at once, and
object-store model_dirs for the history file (it is appended to in place).
"""
import json
import os
import sys
import tempfile

from absl import app, flags, logging

import bwtf
from bwtf.estimator import _flags, _tf_logging
from bwtf.estimator.evaluation import history as _eval_history
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.evaluation.runner import EvalError, EvalJob, evaluate_continuously, evaluate_once

EXIT_USER_ERROR = 2


def _write_json_atomically(path, record):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(record, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)



# ---------------------------------------------------------------------------
# The command line. Model and data flags are bwtf-train's own (same names,
# same meaning), so a training job's flags describe the model to evaluate.
# The flags are defined when the program starts (``run``), not at import,
# so tests can define them on a FlagValues of their own.

def define_flags(flag_values=flags.FLAGS):
    """Defines bwtf-eval's flags on ``flag_values``; returns {group: FlagGroup}."""
    own = _flags.FlagGroup({
        "split": flags.DEFINE_string(
            "split", None, "Split to evaluate (default: --eval_split).", flag_values=flag_values),
        "checkpoint": _eval_setup.define_checkpoint_flag(flag_values),
        "continuous": flags.DEFINE_bool(
            "continuous", False, "Evaluate every new checkpoint until the one at --train_steps.",
            flag_values=flag_values),
        "output_json": flags.DEFINE_string(
            "output_json", None, "Also write the result (continuous: the last one) to this "
            "JSON file.", flag_values=flag_values),
        "eval_timeout_secs": flags.DEFINE_float(
            "eval_timeout_secs", 3600.0, "Continuous: stop after this long without a new "
            "checkpoint.", lower_bound=0.0, flag_values=flag_values),
    })
    return {"model": _flags.define_model_flags(flag_values),
            "data": _flags.define_data_flags(flag_values),
            "train": _flags.define_train_flags(flag_values), "eval": own}


def _user_errors():
    return (EvalError, _eval_history.HistoryError) + _eval_setup.user_errors()


# The flags of the train and data groups that bwtf-eval reads; every other one,
# given, is refused: a --precision or --label_smoothing that silently changed
# nothing would read as if it had.
_USED_FLAGS = frozenset({
    "model_dir", "batch_size", "eval_steps", "train_steps", "eval_throttle_secs",
    "data_dir", "dataset", "use_synthetic_data", "eval_split",
})
_UNUSED_REASON = ("evaluation always computes in float32 and reports the per-example cross-entropy, "
                  "without label smoothing or weight decay, whatever trained the model")


def _refuse_unused_flags(cli_flags):
    unused = _flags.given_but_unused([cli_flags["train"], cli_flags["data"]], _USED_FLAGS)
    if unused:
        raise EvalError(_flags.unused_flags_message("bwtf-eval", unused, _UNUSED_REASON))


def _job_from_values(values):
    train_values, data_values = values["train"], values["data"]
    model_dir = train_values["model_dir"]
    if not model_dir:
        raise EvalError("--model_dir is required: the training run whose checkpoints to evaluate")
    # A continuous evaluator may start before the chief has created model_dir.
    if not values["eval"]["continuous"] and not os.path.isdir(model_dir) and "://" not in model_dir:
        raise EvalError(f"--model_dir {model_dir} does not exist; expected a bwtf-train model_dir")
    output_json = values["eval"]["output_json"]
    if output_json and os.path.isdir(output_json):
        raise EvalError(f"--output_json {output_json} is a directory; expected a file name "
                        "such as eval.json")
    setup = _eval_setup.setup_for_model_dir(values["model"], data_values, values["explicit"], model_dir,
                                            values["eval"]["split"], train_values["batch_size"])
    return EvalJob(model_dir, setup.dataset, setup.train, train_values["batch_size"],
                   train_values["eval_steps"] or None, label_map=setup.label_map), setup


def _final_step(values, setup):
    """--train_steps when given, else the record's (the run's own last step)."""
    explicit = values["explicit"].get("train_steps")
    recorded = (setup.record.data.get("flags", {}).get("train", {}).get("train_steps")
                if setup.record else None)
    return explicit or recorded or values["train"]["train_steps"]


def _run_continuous(job, values, final_step):
    own, train_values = values["eval"], values["train"]
    if own["checkpoint"] not in (None, "", "latest"):
        raise EvalError("--checkpoint names one checkpoint; it cannot be combined with --continuous")
    outcome = evaluate_continuously(
        job, final_step=final_step, idle_timeout_secs=own["eval_timeout_secs"],
        poll_secs=train_values["eval_throttle_secs"])
    logging.info("continuous evaluation stopped (%s) after %d evaluation(s)",
                 outcome.reason, len(outcome.evaluated))
    if outcome.evaluated and own["output_json"]:
        _write_json_atomically(own["output_json"], outcome.evaluated[-1])
    # Timing out before the final step means training stalled or died: a
    # batch job should see that as a failure.
    return 0 if outcome.reason != "idle_timeout" else 1


def main(argv, cli_flags):
    """Runs bwtf-eval with the parsed ``cli_flags`` (from ``define_flags``); exits."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {' '.join(argv[1:])}; every setting is a --flag")
    _tf_logging.route_tensorflow_logs_through_absl()
    values = {group: holders.values() for group, holders in cli_flags.items()}
    values["explicit"] = {name: value for holders in cli_flags.values()
                          for name, value in holders.explicit().items()}
    try:
        _refuse_unused_flags(cli_flags)
        job, setup = _job_from_values(values)
        if values["eval"]["continuous"]:
            sys.exit(_run_continuous(job, values, _final_step(values, setup)))
        record = evaluate_once(job, values["eval"]["checkpoint"])
        if values["eval"]["output_json"]:
            _write_json_atomically(values["eval"]["output_json"], record)
    except _user_errors() as error:
        print(f"bwtf-eval: error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(json.dumps(record, indent=2, sort_keys=True))


def run():
    cli_flags = define_flags()
    bwtf.show_program_flags_in_help()
    app.run(lambda argv: main(argv, cli_flags))


if __name__ == "__main__":
    run()
