"""bwtf: distributed tf.estimator training of image models on HPC clusters.

Sub-packages:
  bwtf.data       the TFDS builder ``imagenet_archive`` for local ImageNet archives
  bwtf.estimator  the training, evaluation, export and launch programs
  bwtf.ckpt       checkpoints gathered on the chief and committed atomically

Importing ``bwtf`` checks the installed TensorFlow before anything else: bwtf is
built on ``tf.estimator``, which TensorFlow removed in 2.16, and failing here with
a plain message beats an AttributeError deep inside a training job. The check
reads the version from the installed distribution's metadata instead of
importing TensorFlow (seconds of start-up), so ``import bwtf`` stays cheap. It
deliberately does not check CUDA or CPU features: TensorFlow reports those.
"""
import importlib.metadata
import importlib.util
import pathlib

SUPPORTED = "2.15"
_INSTALL_HINT = (
    "Install the pinned TensorFlow with bwtf's extras: "
    "pip install 'bwtf[cpu]' (tensorflow-cpu==2.15.1) or 'bwtf[gpu]' "
    "(tensorflow[and-cuda]==2.15.1), in a fresh virtual environment."
)


class UnsupportedTensorFlowError(ImportError):
    """The installed TensorFlow cannot run bwtf."""


def _distribution_version(module_name):
    """The version of the distribution that provides ``module_name`` on sys.path.

    Several distributions can ship a ``tensorflow`` package (tensorflow,
    tensorflow-cpu, tf-nightly, ...); the one that counts is the one Python
    would import, so the dist-info next to the module's own folder is used.
    """
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    package_dir = pathlib.Path(list(spec.submodule_search_locations)[0]).resolve()
    for dist in importlib.metadata.distributions(path=[str(package_dir.parent)]):
        top_level = (dist.read_text("top_level.txt") or "").split()
        if module_name in top_level:
            return dist.version
    return None


def _major_minor(version):
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return None


def require_supported_tensorflow():
    """Raises UnsupportedTensorFlowError unless TensorFlow 2.15.x is installed."""
    if importlib.util.find_spec("tensorflow") is None:
        raise UnsupportedTensorFlowError(
            "bwtf needs TensorFlow 2.15, but no 'tensorflow' module is installed. "
            + _INSTALL_HINT
        )
    version = _distribution_version("tensorflow")
    if version is None:
        return  # A source build without metadata: trust it, TF will complain itself.
    found = _major_minor(version)
    if found is not None and found >= (2, 16):
        raise UnsupportedTensorFlowError(
            f"bwtf needs TensorFlow {SUPPORTED}.x, but TensorFlow {version} is installed. "
            "tf.estimator, which bwtf is built on, was removed in TensorFlow 2.16. "
            + _INSTALL_HINT
        )
    if found is not None and found < (2, 15):
        raise UnsupportedTensorFlowError(
            f"bwtf needs TensorFlow {SUPPORTED}.x, but TensorFlow {version} is installed. "
            + _INSTALL_HINT
        )
    if importlib.util.find_spec("tensorflow_estimator") is None:
        raise UnsupportedTensorFlowError(
            f"TensorFlow {version} is installed but tensorflow-estimator is missing; "
            "pip install 'tensorflow-estimator~=2.15.0'. " + _INSTALL_HINT
        )


require_supported_tensorflow()

__version__ = "0.1.0"


def show_program_flags_in_help(flag_values=None):
    """Makes ``--help`` list the program's own flags, not an empty page.

    absl's ``--help`` lists the key flags of the main module, which for a
    console script is pip's wrapper (it defines none), and bwtf's programs
    define theirs in shared modules. Each program's ``run()`` calls this
    before ``app.run`` so that every bwtf flag counts as the main module's.
    """
    import sys

    from absl import flags

    flag_values = flags.FLAGS if flag_values is None else flag_values
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if module.startswith("bwtf.") or module == sys.argv[0]:
            for flag in module_flags:
                flag_values.register_key_flag_for_module(sys.argv[0], flag)
