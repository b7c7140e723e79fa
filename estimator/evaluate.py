"""Evaluates checkpoints of a training run on one split.

One shot, the newest intact checkpoint (or --checkpoint)::

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

prints one JSON object and writes it to --output_json: precision_at_1,
precision_at_5, loss, global_step, checkpoint, num_examples (counted while
evaluating: the whole split, exactly once) and split.

Continuous (--continuous, also what the evaluator task of a training job
runs): every new intact checkpoint is evaluated once; when several are waiting
the newest is taken and the skipped steps are logged; it stops by itself after
the checkpoint at --train_steps, or after --eval_timeout_secs without a new
checkpoint. Results are appended to MODEL_DIR/eval_<split>/history.jsonl, which
a restarted evaluator reads to skip what is done; --output_json then holds the
last result.

Whatever cluster wrote the checkpoint, this runs in one CPU process (see
``bwtf.estimator.evaluation.single_process``), always in float32, and reports the
per-example cross-entropy without label smoothing or weight decay, whatever
trained the model. A checkpoint of another model or class count is refused
with a message naming the first variable that differs. A job's --flagfile works
here as it does for bwtf-train.

Exit codes:
  0   done
  1   --continuous stopped after --eval_timeout_secs without the final checkpoint
  2   bad flags, dataset or checkpoint (one line; nothing was evaluated)
"""
import functools
import json
import os

from absl import flags, logging

import bwtf
from bwtf import program
from bwtf.estimator import _flags
from bwtf.estimator.evaluation import model_setup as _eval_setup
from bwtf.estimator.evaluation.runner import EvalError, EvalJob, evaluate_continuously, evaluate_once



def _write_json(path, record):
    bwtf.write_atomically(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------
# The command line. Model and data flags are bwtf-train's own (same names,
# same meaning), so a training job's flags describe the model to evaluate.
# The flags are defined when the program starts (``run``), not at import,
# so tests can define them on a FlagValues of their own.

_DATA_FLAGS = ("data_dir", "dataset", "use_synthetic_data")
_RUN_FLAGS = ("model_dir", "batch_size", "eval_steps", "train_steps", "eval_throttle_secs")


def define_flags(flag_values=flags.FLAGS):
    """Defines bwtf-eval's flags on ``flag_values``; returns {group: FlagGroup}."""
    own = _flags.FlagGroup({
        "split": flags.DEFINE_string(
            "split", "validation", "Split to evaluate.", flag_values=flag_values),
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
    return {"eval": own, "model": _flags.define_model_flags(flag_values),
            "data": _flags.define_data_flags(flag_values, only=_DATA_FLAGS),
            "train": _flags.define_train_flags(flag_values, only=_RUN_FLAGS)}


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
        _write_json(own["output_json"], outcome.evaluated[-1])
    # Timing out before the final step means training stalled or died: a
    # batch job should see that as a failure.
    return 0 if outcome.reason != "idle_timeout" else 1


def _evaluate(values, cli_flags):
    values["explicit"] = {name: value for holders in cli_flags.values()
                          for name, value in holders.explicit().items()}
    job, setup = _job_from_values(values)
    program.log_to_file_in(job.model_dir, "eval")
    if values["eval"]["continuous"]:
        return _run_continuous(job, values, _final_step(values, setup))
    record = evaluate_once(job, values["eval"]["checkpoint"])
    if values["eval"]["output_json"]:
        _write_json(values["eval"]["output_json"], record)
    print(json.dumps(record, indent=2, sort_keys=True))
    return 0


def _program(cli_flags):
    return program.Program(
        name="bwtf-eval", doc=__doc__, usage="bwtf-eval [flags]",
        flag_groups=(("Evaluation", cli_flags["eval"]), ("Run", cli_flags["train"]),
                     ("Model", cli_flags["model"]), ("Data", cli_flags["data"])))


def main(argv, cli_flags):
    """Runs bwtf-eval with the parsed ``cli_flags`` (from ``define_flags``); exits with its code."""
    program.run_with_groups(functools.partial(_evaluate, cli_flags=cli_flags), _program(cli_flags), cli_flags,
                            argv)


def run():
    cli_flags = define_flags()
    program.run_with_groups(functools.partial(_evaluate, cli_flags=cli_flags), _program(cli_flags), cli_flags)


if __name__ == "__main__":
    run()
