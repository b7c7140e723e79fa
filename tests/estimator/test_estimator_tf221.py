"""The models on TensorFlow 2.21 (no tf.estimator, no Keras 2), and checkpoints across 2.15 and 2.21.

These tests run a second interpreter with TensorFlow 2.21: the ``tf221_python``
fixture (tests/conftest.py: ``BWTF_TF221_PYTHON``, else ``.venv-tf221`` made
from this checkout). Under it, every model must build in graph mode with
exactly the golden variable list (``testdata/model_variables.json``, dumped
from the 2.15 models before the layer rewrite) without importing
tensorflow-estimator, and a checkpoint written by a plain tf.compat.v1 Saver in
one version must restore in the other and give the same logits (inference, and
one training step with its batch-norm moving statistics after the update).
"""
import json
import os
import pathlib
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from bwtf.estimator import config, model_fn

import model_variables

_HERE = pathlib.Path(__file__).resolve().parent
_TIMEOUT_SECS = 900  # two cores shared with other jobs: building the default-size models takes minutes


def _run(python, *args):
    """Runs ``python args`` with this test's PYTHONPATH (bwtf from this tree); returns its last stdout line."""
    result = subprocess.run([python, *args], capture_output=True, text=True, timeout=_TIMEOUT_SECS,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_every_model_builds_on_tf221_with_the_golden_variables(tf221_python):
    found = json.loads(_run(tf221_python, str(_HERE / "model_variables.py"), "--list", "fp32"))
    assert found == json.loads(model_variables.GOLDEN.read_text())


@pytest.mark.slow
def test_model_path_imports_no_estimator_on_tf221(tf221_python):
    code = ("import json, sys, tensorflow as tf; import bwtf; "
            "from bwtf.estimator import config, model_fn, models; "
            "imported = 'tensorflow_estimator' in sys.modules; "
            "print(json.dumps([tf.__version__, bwtf.TENSORFLOW_LINE, imported, hasattr(tf, 'estimator')]))")
    version, line, imported, has_estimator = json.loads(_run(tf221_python, "-c", code))
    assert version.startswith("2.21.") and line == "2.21"
    assert not imported and not has_estimator


_MODELS = ("small_cnn:16:10", "resnet50:32:7")


def _roundtrip(writer, reader, folder):
    written = json.loads(_run(writer, str(_HERE / "checkpoint_roundtrip.py"), "save", str(folder), *_MODELS))
    read = json.loads(_run(reader, str(_HERE / "checkpoint_roundtrip.py"), "restore", str(folder), *_MODELS))
    assert written["tensorflow"] != read["tensorflow"]
    # On 2.21 nothing may reach for tensorflow-estimator (it is not there); on 2.15
    # model_fn's spec types are tf.estimator's own, by design (bwtf.estimator.runner.spec).
    on_221 = [side for side in (written, read) if side["tensorflow"].startswith("2.21.")]
    assert len(on_221) == 1 and not on_221[0]["tensorflow_estimator_imported"]
    for spec in _MODELS:
        model = folder / spec.split(":")[0]
        for name in ("logits", "training-logits", "statistics"):  # inference; one training step
            expected, restored = np.load(model / f"{name}-save.npy"), np.load(model / f"{name}-restore.npy")
            assert expected.std() > 0.1, f"{name} of random weights should differ between images and classes"
            np.testing.assert_allclose(restored, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(),
                                       err_msg=f"{spec} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["2.15 writes, 2.21 restores", "2.21 writes, 2.15 restores"])
def test_checkpoint_restores_across_tensorflow_versions(tmp_path, direction, tf215_python, tf221_python):
    this, other = tf215_python, tf221_python
    writer, reader = (this, other) if direction.startswith("2.15") else (other, this)
    _roundtrip(writer, reader, tmp_path)


@pytest.mark.slow
def test_checkpoint_of_another_layout_is_refused_with_the_variables_named(tmp_path, tf221_python):
    # A 2.21 checkpoint of small_cnn, checked against resnet50 (missing and unexpected variables).
    _run(tf221_python, str(_HERE / "checkpoint_roundtrip.py"), "save", str(tmp_path), "small_cnn:16:10")
    prefix = str(tmp_path / "small_cnn" / "model.ckpt")
    train_config = config.TrainConfig(model=config.ModelConfig("resnet50", 10, 32))
    with pytest.raises(model_fn.CheckpointMismatchError) as raised:
        model_fn.check_checkpoint_compatible(prefix, train_config)
    message = str(raised.value)
    assert "\n" not in message
    assert "lacks 265 of its 267 variables (model/conv1/batch_normalization/beta," in message
    assert "it has 20 the model does not (model/block1/batch_normalization/beta," in message
    assert tf.train.list_variables(prefix)  # the checkpoint itself was readable
