"""Fixtures for the bwtf.estimator tests.

* ``clean_cluster_env``: no TF_CONFIG, Slurm, PBS or MPI variables leak in.
* ``train_flags``: parses a train.py command line into the grouped values
  ``bwtf.estimator.train.run_task`` takes, restoring the flags afterwards.
* (``estimator_helpers``: ``run_train`` / ``start_train`` run
  ``python -m bwtf.estimator.train`` as a real process, one task of a
  localhost cluster, with its log kept for the report.)
* ``digits_flags``: the flags that train small_cnn on the digits archive.
* ``engine``: "estimator" or "bwtf", set as BWTF_RUNNER for the tasks a test
  starts; "estimator" skips where TensorFlow has no tf.estimator (2.16+).
"""
import pytest

from estimator_helpers import ROLE_VARIABLES



@pytest.fixture
def clean_cluster_env(monkeypatch):
    for name in ROLE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def train_flags(clean_cluster_env):
    from absl import flags
    from absl.testing import flagsaver

    from bwtf.estimator import train

    saver = flagsaver.flagsaver()
    saver.__enter__()

    def parse(*argv):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["bwtf-train", *argv])
        return train.flag_values()

    yield parse
    saver.__exit__(None, None, None)


@pytest.fixture
def digits_flags(digits_data_dir, digits_dataset_name):
    return [
        "--model=small_cnn", f"--dataset={digits_dataset_name}", f"--data_dir={digits_data_dir}",
        "--image_size=32", "--batch_size=32", "--base_lr=0.4", "--warmup_steps=20",
        "--min_crop_area=0.5", "--shuffle_buffer=2000", "--log_every_steps=100", "--seed=1",
    ]


@pytest.fixture(params=["estimator", "bwtf"])
def engine(request, monkeypatch):
    from bwtf.estimator.runner import spec

    if request.param == "estimator" and not spec.HAS_TF_ESTIMATOR:
        pytest.skip("this TensorFlow has no tf.estimator (removed in 2.16); bwtf's runner case covers it")
    monkeypatch.setenv("BWTF_RUNNER", request.param)
    return request.param
