"""bwtf-eval, one shot: the numbers a user gets after a short real run, and the refusals."""
import json
import os

import pytest
import tensorflow as tf
from eval_helpers import run_main, run_module

import bwtf
from bwtf.estimator import evaluate

pytestmark = pytest.mark.timeout(300)

_RESULT_KEYS = {"precision_at_1", "precision_at_5", "loss", "global_step", "checkpoint",
                "num_examples", "split"}


def _split_size(trained_run, split):
    import tensorflow_datasets as tfds

    import bwtf.data  # noqa: F401  registers the builder

    builder = tfds.builder(trained_run.dataset, data_dir=trained_run.data_dir)
    return builder.info.splits[split].num_examples


def test_one_shot_evaluates_the_newest_checkpoint_over_the_whole_split(trained_run, copy_run, tmp_path):
    model_dir = copy_run()
    output = tmp_path / "out" / "eval.json"
    result = run_module("bwtf.estimator.evaluate", *trained_run.model_flags,
                        f"--model_dir={model_dir}", "--split=validation", f"--output_json={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    written = json.loads(output.read_text())
    assert printed == written
    assert set(written) == _RESULT_KEYS
    assert written["global_step"] == 60
    assert written["checkpoint"] == os.path.join(model_dir, "ckpt-60", "model.ckpt-60")
    assert written["num_examples"] == _split_size(trained_run, "validation")
    assert 0.0 <= written["precision_at_1"] <= written["precision_at_5"] <= 1.0
    # 60 steps of small_cnn learn the digits well beyond chance (0.1).
    assert written["precision_at_1"] > 0.2
    assert written["loss"] > 0
    events = tf.compat.v1.train.summary_iterator
    eval_dir = os.path.join(model_dir, "eval_validation")
    tags = {value.tag for name in os.listdir(eval_dir) if name.startswith("events.")
            for event in events(os.path.join(eval_dir, name)) for value in event.summary.value}
    assert {"precision_at_1", "precision_at_5", "loss"} <= tags


@pytest.mark.parametrize("checkpoint", ["ckpt-20", "ckpt-20/model.ckpt-20"])
def test_a_named_checkpoint_is_evaluated_instead_of_the_newest(trained_run, copy_run, capsys,
                                                              checkpoint, tmp_path):
    model_dir = copy_run()
    output = tmp_path / "eval.json"
    code = run_main(evaluate, [*trained_run.model_flags, f"--model_dir={model_dir}",
                               f"--checkpoint={os.path.join(model_dir, checkpoint)}",
                               "--split=train", f"--output_json={output}"])
    assert code == 0, capsys.readouterr().err
    record = json.loads(output.read_text())
    assert record["global_step"] == 20
    assert record["split"] == "train"
    assert record["num_examples"] == _split_size(trained_run, "train")


@pytest.fixture(scope="module")
def seven_class_checkpoint(tmp_path_factory):
    """A small_cnn checkpoint for 7 classes (the digits have 10)."""
    from bwtf.estimator import config, model_fn

    prefix = str(tmp_path_factory.mktemp("seven") / "model.ckpt-5")
    with tf.Graph().as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3])
        model_fn.build_logits(images, config.ModelConfig("small_cnn", 7, 32), training=False)
        tf.compat.v1.train.get_or_create_global_step()
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            tf.compat.v1.train.Saver().save(session, prefix)
    return prefix


def _bad_eval_cases(trained_run, copy_run, tmp_path, seven_class_checkpoint):
    empty = tmp_path / "empty"
    empty.mkdir()
    model_dir = copy_run()
    model = [f for f in trained_run.model_flags if not f.startswith("--model=")]
    return {
        "other_model": ([*model, "--model=resnet50", f"--model_dir={model_dir}"],
                        "--model=resnet50 contradicts the run record"),
        "other_class_count": ([*trained_run.model_flags, f"--model_dir={model_dir}",
                               f"--checkpoint={seven_class_checkpoint}"],
                              "with 10 classes"),
        "empty_model_dir": ([*trained_run.model_flags, f"--model_dir={empty}"],
                            "holds no intact checkpoint"),
        "missing_model_dir": ([*trained_run.model_flags, f"--model_dir={tmp_path / 'nope'}"],
                              "does not exist"),
        "missing_split": ([*trained_run.model_flags, f"--model_dir={model_dir}", "--split=test"],
                          "has no split(s) test; it has train, validation. Choose one with --split."),
        "bogus_checkpoint": ([*trained_run.model_flags, f"--model_dir={model_dir}",
                              f"--checkpoint={tmp_path / 'ckpt-x'}"], "neither 'latest'"),
        "output_json_is_a_directory": ([*trained_run.model_flags, f"--model_dir={model_dir}",
                                        f"--output_json={tmp_path}"], "is a directory"),
        "checkpoint_with_continuous": ([*trained_run.model_flags, f"--model_dir={model_dir}",
                                        f"--checkpoint={model_dir}/ckpt-20", "--continuous"],
                                       "cannot be combined with --continuous"),
    }


@pytest.mark.parametrize("case", ["other_model", "other_class_count", "empty_model_dir",
                                  "missing_model_dir", "missing_split", "bogus_checkpoint",
                                  "output_json_is_a_directory", "checkpoint_with_continuous"])
def test_bad_input_is_refused_with_one_clear_line(trained_run, copy_run, tmp_path, capsys,
                                                  seven_class_checkpoint, case):
    argv, message = _bad_eval_cases(trained_run, copy_run, tmp_path, seven_class_checkpoint)[case]
    output = tmp_path / "eval.json"
    code = run_main(evaluate, [f"--output_json={output}", *argv])  # a case's own flag wins
    err = capsys.readouterr().err
    assert code == bwtf.EXIT_USAGE
    line = [text for text in err.splitlines() if text.startswith("bwtf-eval: error:")]
    assert len(line) == 1 and message in line[0], err[-2000:]
    assert "Traceback" not in err
    assert not output.exists()


def test_a_corrupt_history_file_is_named_in_the_error(trained_run, copy_run, capsys):
    model_dir = copy_run()
    os.makedirs(os.path.join(model_dir, "eval_validation"))
    history = os.path.join(model_dir, "eval_validation", "history.jsonl")
    with open(history, "w") as stream:
        stream.write("garbage\n{\"global_step\": 20}\n")
    code = run_main(evaluate, [*trained_run.model_flags, f"--model_dir={model_dir}", "--continuous"])
    err = capsys.readouterr().err
    assert code == bwtf.EXIT_USAGE
    assert f"{history} line 1 is not JSON" in err


def test_a_negative_idle_timeout_is_refused_by_the_flag_parser():
    from absl import flags

    flag_values = flags.FlagValues()
    evaluate.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match="eval_timeout_secs"):
        flag_values(["prog", "--eval_timeout_secs=-5"])


def test_a_cluster_tf_config_does_not_pull_the_evaluation_into_the_cluster(
        trained_run, copy_run, tmp_path, capsys, monkeypatch):
    # The evaluator task of a job sees the job's TF_CONFIG; none of these hosts exist.
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"chief": ["nohost:1"], "worker": ["nohost:2"], "ps": ["nohost:3"]},
        "task": {"type": "worker", "index": 0}}))
    output = tmp_path / "eval.json"
    code = run_main(evaluate, [*trained_run.model_flags, f"--model_dir={copy_run()}",
                               f"--output_json={output}"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(output.read_text())["global_step"] == 60
