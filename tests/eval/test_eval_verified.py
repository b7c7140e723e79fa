"""The evaluator, bwtf-eval and bwtf-export read through bwtf.ckpt's verified reader.

On copies of the shared real training run (checkpoints 20, 40, 60): a corrupt
prefix is refused under its own name; a checkpoint that turns out broken while
the evaluator restores it is replaced by the newest intact one, and the record
(history, metrics) names the step actually restored; one that vanishes before
its evaluation is passed over with a warning.
"""
import json
import os
import shutil

import pytest
from absl import flags
from eval_helpers import run_main, run_module

from bwtf.estimator import _flags
from bwtf.estimator import evaluate
from bwtf.estimator.evaluation import model_setup
from bwtf.estimator.evaluation import runner

pytestmark = pytest.mark.timeout(300)


def _job(trained_run, model_dir):
    """The EvalJob bwtf-eval would build from the run's model flags."""
    flag_values = flags.FlagValues()
    model_flags = _flags.define_model_flags(flag_values)
    data_flags = _flags.define_data_flags(flag_values)
    flag_values(["prog", *trained_run.model_flags])
    setup = model_setup.model_setup(model_flags.values(), data_flags.values(), model_dir,
                                    "validation", 64)
    return runner.EvalJob(model_dir, setup.dataset, setup.train, 64)


def _flip_a_byte(model_dir, step):
    data = os.path.join(model_dir, f"ckpt-{step}", f"model.ckpt-{step}.data-00000-of-00001")
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(data, "wb").write(bytes(raw))


def test_a_corrupt_prefix_is_refused_under_its_own_name(trained_run, copy_run, capsys, tmp_path):
    model_dir = copy_run()
    _flip_a_byte(model_dir, 40)
    output = tmp_path / "eval.json"
    prefix = os.path.join(model_dir, "ckpt-40", "model.ckpt-40")
    code = run_main(evaluate, [*trained_run.model_flags, f"--model_dir={model_dir}",
                               f"--checkpoint={prefix}", "--split=train", f"--output_json={output}"])
    err = capsys.readouterr().err
    assert code == 2 and "ckpt-40" in err and "not intact" in err and "CRC32" in err
    assert not output.exists()


def test_a_checkpoint_broken_at_restore_is_recorded_as_the_one_restored(trained_run, copy_run, caplog):
    model_dir = copy_run()
    _flip_a_byte(model_dir, 60)  # sizes still match: listed as intact, fails at restore
    outcome = runner.evaluate_continuously(
        _job(trained_run, model_dir), final_step=60, idle_timeout_secs=1, poll_secs=0.01,
        sleep=lambda secs: None)
    record = outcome.evaluated[-1]
    assert record["global_step"] == 40
    assert record["checkpoint"] == os.path.join(model_dir, "ckpt-40", "model.ckpt-40")
    assert "the metrics are of" in caplog.text and "ckpt-60" in caplog.text
    history = os.path.join(model_dir, "eval_validation", "history.jsonl")
    assert [json.loads(line)["global_step"] for line in open(history)] == [40]


def test_a_checkpoint_deleted_before_its_evaluation_is_passed_over(trained_run, copy_run, caplog):
    model_dir = copy_run()
    evaluator = runner._Evaluator(_job(trained_run, model_dir))  # pylint: disable=protected-access
    shutil.rmtree(os.path.join(model_dir, "ckpt-20"))
    assert evaluator(20, os.path.join(model_dir, "ckpt-20", "model.ckpt-20")) is None
    assert "removed while being evaluated" in caplog.text


def test_export_of_a_corrupt_checkpoint_is_refused(trained_run, copy_run, tmp_path):
    model_dir = copy_run()
    _flip_a_byte(model_dir, 60)
    result = run_module("bwtf.estimator.export", *trained_run.model_flags,
                        f"--model_dir={model_dir}",
                        f"--checkpoint={os.path.join(model_dir, 'ckpt-60')}",
                        f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 2 and "ckpt-60" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "export").exists()
