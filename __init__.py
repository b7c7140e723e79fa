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
