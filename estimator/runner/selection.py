"""Which engine runs bwtf's model_fn: tf.estimator or bwtf's own runner.

    use_bwtf_runner(environ=None) -> bool

``BWTF_RUNNER=bwtf`` selects bwtf's runner, ``BWTF_RUNNER=estimator`` selects
``tf.estimator``; unset (or empty), the runner is used exactly when
``tf.estimator`` is missing (TensorFlow 2.16 and later). So TensorFlow 2.15
keeps the Estimator path by default and can still run, and test, the runner.
Asking for ``estimator`` where it is not installed, or any other value, is
bad input (exit 2).

Deliberately left out: a command-line flag. The choice is per environment
(the suite's runs, a site's module file), and every task of a job inherits
it from the launcher or the batch script, so tasks cannot disagree.
"""
import os

import bwtf

ENV_VARIABLE = "BWTF_RUNNER"
CHOICES = ("bwtf", "estimator")


class RunnerSelectionError(bwtf.UserError, ValueError):
    """BWTF_RUNNER names an engine that does not exist or is not installed."""


def _has_tf_estimator():
    from bwtf.estimator.runner import spec  # pylint: disable=import-outside-toplevel

    return spec.HAS_TF_ESTIMATOR


def use_bwtf_runner(environ=None):
    """True when bwtf's runner, not tf.estimator, runs the model_fn (see the module docstring)."""
    environ = os.environ if environ is None else environ
    choice = environ.get(ENV_VARIABLE, "").strip().lower()
    if not choice:
        return not _has_tf_estimator()
    if choice not in CHOICES:
        raise RunnerSelectionError(
            f"{ENV_VARIABLE}={environ[ENV_VARIABLE]!r} is not an engine; expected one of {', '.join(CHOICES)} "
            "(or unset: tf.estimator where it is installed, bwtf's runner otherwise)")
    if choice == "estimator" and not _has_tf_estimator():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        raise RunnerSelectionError(
            f"{ENV_VARIABLE}=estimator but TensorFlow {tf.__version__} has no tf.estimator (removed in 2.16); "
            f"unset {ENV_VARIABLE} or set it to bwtf")
    return choice == "bwtf"
