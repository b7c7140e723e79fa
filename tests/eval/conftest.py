"""Fixtures of the eval area: one short real training run, and ways to run the commands.

``trained_run`` trains small_cnn on the digits dataset with ``bwtf-train`` for
60 steps, committing checkpoints at 20, 40 and 60, once per session (about 15
seconds on 2 cores). Tests that write into a model_dir work on a copy
(``copy_run``) so they do not see each other's evaluations.
"""
import dataclasses
import os
import shutil

import pytest

from eval_helpers import CHECKPOINT_STEPS, TRAIN_STEPS, run_module


@dataclasses.dataclass(frozen=True)
class TrainedRun:
    model_dir: str
    data_dir: str
    dataset: str
    model_flags: tuple  # the flags that rebuild the trained model on its dataset
    train_log: str


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, digits_data_dir, digits_dataset_name):
    model_dir = str(tmp_path_factory.mktemp("eval_run") / "model")
    model_flags = ("--model=small_cnn", "--image_size=32", f"--data_dir={digits_data_dir}",
                   f"--dataset={digits_dataset_name}")
    result = run_module(
        "bwtf.estimator.train", *model_flags, f"--model_dir={model_dir}",
        f"--train_steps={TRAIN_STEPS}", "--batch_size=32", "--distribution=none",
        "--save_checkpoints_steps=20", "--log_every_steps=10", "--base_lr=0.4",
        "--keep_checkpoints=5")
    assert result.returncode == 0, result.stderr[-3000:]
    for step in CHECKPOINT_STEPS:
        assert os.path.isdir(os.path.join(model_dir, f"ckpt-{step}")), os.listdir(model_dir)
    return TrainedRun(model_dir, digits_data_dir, digits_dataset_name, model_flags, result.stderr)


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """A private copy of the trained model_dir (checkpoints and events)."""
    def copy(name="model"):
        target = str(tmp_path / name)
        shutil.copytree(trained_run.model_dir, target)
        return target

    return copy
