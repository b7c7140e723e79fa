"""Fixtures shared by every test area. Keep this file small and generic.

* ``imagenet_samples_dir``: the real ImageNet sample JPEGs, read in place.
* ``tf221_python``: a python with TensorFlow 2.21 and this checkout (this one when the
  suite runs under 2.21, else made on first use).
* ``tf215_python``: this python when the suite runs under TensorFlow 2.15; the tests
  that need both versions skip in the 2.21 suite (the 2.15 suite runs them both ways).
* the ``launcher`` mark on every test in tests/launch and tests/test_readme.py
  (CI's 2.21 pass leaves them out: ``-m "not launcher"``).
* ``digits_data_dir`` / ``digits_dataset_name``: a real-data TFDS dataset
  (scikit-learn's digits as an ILSVRC2012-layout archive), built once per session.
"""
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DIGITS_DATASET_NAME = "imagenet_archive/present"


@pytest.fixture(scope="session")
def imagenet_samples_dir():
    """``<repo>/../shared/data/imagenet-samples`` (52 real JPEGs); skips when absent."""
    path = REPO_ROOT.parent / "shared" / "data" / "imagenet-samples"
    if not path.is_dir() or not any(path.glob("*.JPEG")):
        pytest.skip(f"real ImageNet samples not found at {path} (they live outside the repository "
                    "and are not shipped with it)")
    return path


@pytest.fixture(scope="session")
def digits_dataset_name():
    """The name to pass to ``tfds.load``/``tfds.builder`` for ``digits_data_dir``."""
    return DIGITS_DATASET_NAME


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A TFDS data_dir holding the digits dataset, built once per test session.

    1,797 real 64x64 scans (scikit-learn's digits) in 10 classes n00000000 to
    n00000009 ("digit zero" ... "digit nine"), splits ``train`` (1,442) and
    ``validation`` (355), each example with image, label, synset, label_text,
    file_name and one bounding box. Load it with::

        import bwtf.data  # registers the builder
        tfds.load(digits_dataset_name, data_dir=digits_data_dir, split="train")

    where ``digits_dataset_name`` is the fixture ("imagenet_archive/present").
    """
    from bwtf.data import build
    from bwtf.data import sample_archive

    root = tmp_path_factory.mktemp("digits")
    manual_dir = sample_archive.write_sample_archive(root / "manual", layout="ilsvrc2012")
    summary = build.build_dataset(manual_dir, root / "tfds", class_set="present")
    assert f"imagenet_archive/{summary.dataset_name.split('/')[1]}" == DIGITS_DATASET_NAME
    return str(root / "tfds")


# The TensorFlow 2.21 environment the cross-version tests run in, made from this
# checkout by the README's install command when BWTF_TF221_PYTHON names none.
TF221_VENV = REPO_ROOT / ".venv-tf221"
_TF221_INSTALL_TIMEOUT_SECS = 3600


def _has_tf221(python):
    """``python`` runs, imports this checkout's bwtf, and has TensorFlow 2.21."""
    if not python.exists():
        return False
    probe = subprocess.run(
        [str(python), "-c", "import os, sys, bwtf, tensorflow as tf; assert tf.__version__.startswith('2.21.'); "
         "assert os.path.realpath(bwtf.__file__).startswith(os.path.realpath(sys.argv[1]) + os.sep)",
         str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300, check=False, cwd="/",
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return probe.returncode == 0


@pytest.fixture(scope="session")
def tf221_python():
    """A python with TensorFlow 2.21 and this checkout's bwtf.

    ``BWTF_TF221_PYTHON`` names one; else ``.venv-tf221`` in the checkout,
    installed on first use with ``BWTF_VENV=.venv-tf221
    BWTF_EXTRAS=cpu-tf221,test bash scripts/install.sh`` (a few minutes, from
    the package registry; later runs reuse it).
    """
    import bwtf

    if bwtf.TENSORFLOW_LINE == "2.21":
        return sys.executable
    python = os.environ.get("BWTF_TF221_PYTHON")
    if python:
        if not os.path.exists(python):
            pytest.fail(f"BWTF_TF221_PYTHON={python} does not exist")
        return python
    python = TF221_VENV / "bin" / "python"
    if not _has_tf221(python):
        result = subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "install.sh")], cwd=REPO_ROOT, capture_output=True, text=True,
            env=dict(os.environ, BWTF_VENV=str(TF221_VENV), BWTF_EXTRAS="cpu-tf221,test"),
            timeout=_TF221_INSTALL_TIMEOUT_SECS, check=False)
        if result.returncode != 0 or not _has_tf221(python):
            pytest.fail(f"installing the TensorFlow 2.21 environment failed (exit {result.returncode}):\n"
                        f"{(result.stdout + result.stderr)[-3000:]}")
    return str(python)


@pytest.fixture(scope="session")
def tf215_python():
    """This python, when it runs TensorFlow 2.15 (see the module docstring)."""
    import bwtf

    if bwtf.TENSORFLOW_LINE != "2.15":
        pytest.skip("needs a TensorFlow 2.15 interpreter: the 2.15 suite (.venv) runs this case, "
                    "starting the 2.21 interpreter itself")
    return sys.executable


_LAUNCHER_PATHS = (REPO_ROOT / "tests" / "launch", REPO_ROOT / "tests" / "test_readme.py")


def pytest_collection_modifyitems(items):
    for item in items:
        path = pathlib.Path(str(item.path))
        if any(path == root or root in path.parents for root in _LAUNCHER_PATHS):
            item.add_marker(pytest.mark.launcher)
