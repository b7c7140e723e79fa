"""Under `bazel test`, bwtf imports from the runfiles tree, with the venv's TensorFlow.

These are the promises of the Bazel setup (WORKSPACE, .bazelrc, scripts/bazel/)
that a user running `bazel test` relies on: `import bwtf.ckpt` finds the files
the BUILD deps put in <runfiles>/bwtf, not the source tree; a module the deps do
not list cannot be imported; bwtf's sub-packages are not top-level packages; and
the interpreter is the project virtualenv with TensorFlow 2.15.

They run only under Bazel (scripts/bazel_smoke.sh runs them); under plain pytest
there is no runfiles tree to check, so they skip and say so.
"""
import importlib.util
import os
import pathlib
import sys

import pytest

_RUNFILES = os.environ.get("TEST_SRCDIR")
pytestmark = pytest.mark.skipif(
    _RUNFILES is None,
    reason="checks Bazel's runfiles tree; run under Bazel with: bash scripts/bazel_smoke.sh",
)


def _in_runfiles(module_file):
    """module_file's path below <runfiles>/bwtf, without following the runfiles symlinks."""
    return pathlib.Path(os.path.abspath(module_file)).relative_to(pathlib.Path(_RUNFILES, "bwtf"))


def test_bwtf_ckpt_imports_from_the_runfiles_tree():
    import bwtf
    from bwtf import ckpt

    assert _in_runfiles(bwtf.__file__) == pathlib.Path("__init__.py")
    assert _in_runfiles(ckpt.__file__) == pathlib.Path("ckpt", "__init__.py")
    # A lazily served name loads its module, which //ckpt's deps must provide.
    assert ckpt.CheckpointPolicy.__module__ == "bwtf.ckpt.policy"


def test_a_module_missing_from_the_deps_cannot_be_imported():
    # bwtf/estimator/train.py exists in the source tree (and in the venv's
    # editable install), but nothing this test's target depends on needs it
    # (of bwtf/estimator/ the root package needs only _tf_notices.py).
    assert (pathlib.Path(__file__).resolve().parents[2] / "estimator" / "train.py").is_file()
    assert importlib.util.find_spec("bwtf.estimator.train") is None


@pytest.mark.parametrize("name", ["data", "estimator", "ckpt"])
def test_subpackages_are_not_top_level_packages(name):
    spec = importlib.util.find_spec(name)
    assert spec is None, f"'import {name}' would load {spec.origin}"


def test_the_interpreter_is_the_virtualenv_with_tensorflow_2_15():
    assert sys.prefix != sys.base_prefix, f"{sys.executable} is not a virtualenv's python"
    import tensorflow as tf

    assert tf.__version__.startswith("2.15."), tf.__version__
    assert hasattr(tf, "estimator")
