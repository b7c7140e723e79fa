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

* ``write_atomically(path, data, root=run_folder)``: readers see the old file or
  the new one, whole, and the new one survives a crash (fsync of the file, then
  of its folder); no symbolic link below the run folder is followed
  (``open_below`` is the same walk for other opens; ``LinkRefusedError``).
  Every atomic file write of bwtf goes through it; ``bwtf.ckpt.storage`` uses it
  for local paths and a single PUT on object stores.
"""
import errno
import importlib.metadata
import importlib.util
import os
import pathlib
import stat
import uuid

from bwtf.estimator import _tf_notices

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
_tf_notices.install(TENSORFLOW_LINE)

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


class LinkRefusedError(UserError, OSError):
    """A path below a run folder is or crosses a symbolic link; bwtf does not follow it."""


def _refuse_if_link(error, dir_fd, name, path, root):
    if error.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK, errno.EEXIST):
        return
    try:
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return
    if is_link:
        raise LinkRefusedError(
            errno.ELOOP, f"{path} is or crosses a symbolic link ({name}); bwtf never follows "
            f"links inside the run folder {root}: remove the link") from None


def _parts_below(root, path):
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    if os.path.isabs(rel) or ".." in parts:
        raise LinkRefusedError(errno.EINVAL, f"{path} is not below {root}")
    return [] if rel == "." else parts


def _open_folder_below(root, parts, path, create=False):
    """A directory fd for ``root/parts...``, no link followed below ``root``."""
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=dir_fd)
                except FileExistsError:
                    pass
            try:
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError as e:
                _refuse_if_link(e, dir_fd, part, path, root)
                raise
            os.close(dir_fd)
            dir_fd = next_fd
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd


def open_below(root, path, flags, mode=0o666):
    """``os.open`` of ``path`` below the directory ``root``, following no link below ``root``.

    Each component is opened relative to its parent's fd with ``O_NOFOLLOW``,
    so a link planted anywhere below ``root`` (or swapped in meanwhile) raises
    LinkRefusedError instead of leading the open outside the run folder.
    """
    parts = _parts_below(root, path)
    if not parts:
        raise LinkRefusedError(errno.EINVAL, f"{path} is not below {root}")
    dir_fd = _open_folder_below(root, parts[:-1], path)
    try:
        return os.open(parts[-1], flags | os.O_NOFOLLOW, mode, dir_fd=dir_fd)
    except OSError as e:
        _refuse_if_link(e, dir_fd, parts[-1], path, root)
        raise
    finally:
        os.close(dir_fd)


def write_atomically(path, data, on_partial=None, root=None):
    """Replaces ``path`` with ``data`` (bytes or str) durably; returns ``path``.

    ``root`` is the run folder (model_dir, the job's status folder): the
    folders from it down to ``path`` are created if missing and walked without
    following a link (LinkRefusedError); without it, ``path``'s own folder is
    the root. Either way the last component is replaced, never written
    through: a link planted at ``path`` becomes a plain file and its target
    stays as it was. The temporary sibling is created with mode 0666 minus the
    umask (not ``mkstemp``'s 0600), so a group sharing the folder can read the
    result; it is fsynced, renamed over ``path`` and the folder is fsynced.
    ``on_partial`` is called when half the data is written (crash tests use it).
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    if root is None:
        os.makedirs(folder, exist_ok=True)
        root = folder
    else:
        root = os.path.abspath(root)
        os.makedirs(root, exist_ok=True)
    dir_fd = _open_folder_below(root, _parts_below(root, folder), path, create=True)
    try:
        _replace_in(dir_fd, name, payload, on_partial, path, root)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _replace_in(dir_fd, name, payload, on_partial, path, root):
    temporary = f".{name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666,
                         dir_fd=dir_fd)
    except OSError as e:
        _refuse_if_link(e, dir_fd, temporary, path, root)
        raise
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload[: len(payload) // 2])
            stream.flush()
            if on_partial is not None:
                on_partial()
            stream.write(payload[len(payload) // 2:])
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        try:
            os.unlink(temporary, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
