"""bwtf: distributed tf.estimator training of image models on HPC clusters.

Sub-packages:
  bwtf.data       the TFDS builder ``imagenet_archive`` for local ImageNet archives
  bwtf.estimator  the training, evaluation, export and launch programs
  bwtf.ckpt       checkpoints gathered on the chief and committed atomically

Importing ``bwtf`` checks the installed TensorFlow before anything else: bwtf
supports TensorFlow 2.15.x (the last release with ``tf.estimator``) and 2.21.x
(without it; bwtf's own Estimator-compatible runner stands in), and refuses any
other version, and an environment that mixes installs (two TensorFlow
distributions of different versions, or tensorflow-estimator beside 2.21, or
one of another version beside 2.15), with one line that says what to install:
failing here beats an AttributeError deep inside a training job.
``TENSORFLOW_LINE`` says which of the two is installed. The check reads
versions from the installed distributions' metadata instead of importing
TensorFlow (seconds of start-up), so ``import bwtf`` stays cheap. It
deliberately does not check CUDA or CPU features: TensorFlow reports those.

The root package also holds the two primitives every part shares, so that no
part imports a sibling for them (the program shell is ``bwtf.program``):

* ``UserError`` and the exit codes. A ``UserError`` is a problem the user
  caused or can fix (bad flags, a missing dataset, an unreachable cluster, a
  corrupt checkpoint); its message says what was expected, what was found and
  what to do. The program shell prints it as one line, ``<program>: error:
  <message>``, and exits with its ``exit_code``; any other exception is a bug
  and keeps its traceback. Every part derives its errors from it.

      EXIT_OK              0   done
      EXIT_FAILED          1   ran but missed its goal (an evaluator that timed out
                               before the final checkpoint; a checkpoint that is not
                               intact for ``bwtf-ckpt verify``)
      EXIT_USAGE           2   bad input: one line names it, nothing was started
      EXIT_CHIEF_VANISHED  70  (EX_SOFTWARE) a ps or worker whose chief vanished
      EXIT_FENCED          73  (EX_CANTCREAT) a chief fenced off by a newer writer of
                               the same model_dir: it must stop writing; do not requeue
      EXIT_REQUEUE         75  (EX_TEMPFAIL) stopped by a signal or the walltime after
                               a durable final save: requeue me

* ``write_atomically(path, data)``: readers see the old file or the new one,
  whole, and the new one survives a crash (fsync of the file, then of its
  folder). Local paths only; ``bwtf.ckpt.storage`` does the same on object stores.
"""
import importlib.metadata
import importlib.util
import os
import pathlib
import uuid

SUPPORTED = ("2.15", "2.21")
_INSTALL_HINT = (
    "Install bwtf with one TensorFlow extra, in a fresh virtual environment: "
    "pip install 'bwtf[cpu]' (tensorflow-cpu==2.15.1, with tf.estimator), 'bwtf[gpu]' "
    "(tensorflow[and-cuda]==2.15.1), 'bwtf[cpu-tf221]' (tensorflow-cpu==2.21.0) or "
    "'bwtf[gpu-tf221]' (tensorflow[and-cuda]==2.21.0)."
)
# Distributions that install the ``tensorflow`` package: two of them in one
# environment overwrite each other's files, whichever was installed last wins.
_TENSORFLOW_DISTRIBUTIONS = frozenset((
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
    "tensorflow-aarch64", "tf-nightly", "tf-nightly-cpu", "tf-nightly-gpu", "intel-tensorflow",
))


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


def _installed_tensorflow_distributions():
    """{"tensorflow-cpu 2.15.1", ...}: every TensorFlow distribution on sys.path."""
    found = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name in _TENSORFLOW_DISTRIBUTIONS:
            found.add(f"{name} {dist.version}")
    return found


def _check_one_tensorflow(version):
    """Refuses TensorFlow distributions of different versions in one environment."""
    installed = _installed_tensorflow_distributions()
    versions = {entry.split()[1] for entry in installed} | {version}
    if len(versions) > 1:
        raise UnsupportedTensorFlowError(
            f"this environment mixes TensorFlow installs: {', '.join(sorted(installed))} "
            f"(Python imports TensorFlow {version}); their files overwrite each other. " + _INSTALL_HINT)


def _check_estimator(version):
    """tensorflow-estimator 2.15 beside TensorFlow 2.15, and none beside 2.21."""
    estimator = importlib.util.find_spec("tensorflow_estimator") is not None
    estimator_version = _distribution_version("tensorflow_estimator") if estimator else None
    if _major_minor(version) == (2, 15):
        if not estimator:
            raise UnsupportedTensorFlowError(
                f"TensorFlow {version} is installed but tensorflow-estimator is missing; "
                "pip install 'tensorflow-estimator~=2.15.0'. " + _INSTALL_HINT)
        if estimator_version is not None and _major_minor(estimator_version) != (2, 15):
            raise UnsupportedTensorFlowError(
                f"this environment mixes TensorFlow installs: tensorflow-estimator {estimator_version} "
                f"beside TensorFlow {version}; pip install 'tensorflow-estimator~=2.15.0'. " + _INSTALL_HINT)
    elif estimator:
        raise UnsupportedTensorFlowError(
            f"this environment mixes TensorFlow installs: tensorflow-estimator {estimator_version or '(unknown)'} "
            f"(made for TensorFlow 2.15) beside TensorFlow {version}, which has no tf.estimator; "
            "pip uninstall tensorflow-estimator, or " + _INSTALL_HINT[0].lower() + _INSTALL_HINT[1:])


def require_supported_tensorflow():
    """Raises UnsupportedTensorFlowError unless one TensorFlow 2.15.x or 2.21.x is installed.

    Returns the supported line, "2.15" or "2.21" (None for a source build
    without metadata: TensorFlow will complain itself if it cannot work).
    """
    if importlib.util.find_spec("tensorflow") is None:
        raise UnsupportedTensorFlowError(
            "bwtf needs TensorFlow 2.15 or 2.21, but no 'tensorflow' module is installed. " + _INSTALL_HINT)
    version = _distribution_version("tensorflow")
    if version is None:
        return None
    found = _major_minor(version)
    if found not in ((2, 15), (2, 21)):
        raise UnsupportedTensorFlowError(
            f"bwtf needs TensorFlow 2.15.x or 2.21.x, but TensorFlow {version} is installed. " + _INSTALL_HINT)
    _check_one_tensorflow(version)
    _check_estimator(version)
    return f"{found[0]}.{found[1]}"


# "2.15" (tf.estimator) or "2.21" (no tf.estimator: bwtf's own runner); None for a source build.
TENSORFLOW_LINE = require_supported_tensorflow()

__version__ = "0.1.0"


# Pass as ``extra=`` to a logging call whose line belongs in the log file only, not on the
# console (bwtf.program's console filter drops it unless -v is given).
FILE_ONLY = {"console": False}
# ``extra=bwtf.CONSOLE``: a record of bwtf's own that reaches the console even when TensorFlow runs
# it from a generated file (autograph under a distribution strategy).
CONSOLE = {"console": True}

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHIEF_VANISHED = 70
EXIT_FENCED = 73
EXIT_REQUEUE = 75


class UserError(Exception):
    """A problem the user can act on; the message says what was expected, found, and what to do.

    Subclasses may set ``exit_code`` (default ``EXIT_USAGE``).
    """

    exit_code = EXIT_USAGE


class FencedWriterError(UserError):
    """A newer writer took over the model_dir; this one must stop writing (exit ``EXIT_FENCED``)."""

    exit_code = EXIT_FENCED


def _fsync_folder(folder):
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def write_atomically(path, data, on_partial=None):
    """Replaces ``path`` with ``data`` (bytes or str) durably; the file keeps the user's umask.

    The temporary sibling is created with mode 0666 minus the umask (not
    ``mkstemp``'s 0600), so a group sharing the folder can read the result.
    ``on_partial`` is called when half the data is written (crash tests use it).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload[: len(payload) // 2])
            stream.flush()
            if on_partial is not None:
                on_partial()
            stream.write(payload[len(payload) // 2:])
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)
    _fsync_folder(folder)
    return path
