"""A checkpoint written by a parameter-server cluster evaluates and exports in one CPU process.

The cluster (1 ps + the chief, on localhost through ``bwtf-launch``) keeps the
variables on ``/job:ps`` and saves them gathered on the chief; evaluation and
export then run here, in a single process that is part of no cluster.
"""
import json

import pytest
from eval_helpers import run_main, run_module

from bwtf.estimator import evaluate, export

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def ps_run(trained_run, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("ps_run") / "model")
    result = run_module(
        "bwtf.estimator.launch", "--num_ps=1", "--num_workers=1", "--",
        *trained_run.model_flags, f"--model_dir={model_dir}", "--train_steps=20",
        "--batch_size=16", "--save_checkpoints_steps=10", "--log_every_steps=10",
        "--eval_steps=1")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "[ps:0]" in result.stdout + result.stderr, "the run must really have had a ps task"
    return model_dir


def test_a_ps_cluster_checkpoint_evaluates_and_exports_here(trained_run, ps_run, tmp_path, capsys):
    output = tmp_path / "eval.json"
    # The chief's run record describes the model: --model_dir alone is enough.
    code = run_main(evaluate, [f"--model_dir={ps_run}", f"--output_json={output}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(output.read_text())
    assert record["global_step"] == 20 and record["num_examples"] > 0

    export_dir = tmp_path / "export"
    code = run_main(export, [f"--model_dir={ps_run}", f"--export_dir={export_dir}"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((export_dir / "20" / export.METADATA_FILE).read_text())["global_step"] == 20
