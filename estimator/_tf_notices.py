"""TensorFlow 2.21's first import: its C++ start-up notices kept off the console when
TF_CPP_MIN_LOG_LEVEL asks for that, and scikit-learn left out in bwtf's programs.

TensorFlow 2.21 logs through absl before absl's logging is initialized, and
what it logs then ignores ``TF_CPP_MIN_LOG_LEVEL``: every process prints
absl's banner "WARNING: All log messages before absl::InitializeLog() is
called are written to STDERR" and the oneDNN notice, twice, while ``import
tensorflow`` runs (TensorFlow 2.15 honours the variable). A localhost job of
four tasks put 16 such lines among bwtf's own.

``install(line)`` (called by ``bwtf/__init__.py``) does nothing unless the
installed TensorFlow is 2.21. The filter works when ``TF_CPP_MIN_LOG_LEVEL``
is 1 or more: the first ``import tensorflow`` writes its file-descriptor-level stderr into a
pipe read by a small helper process (this file run as a script), which
passes each line on to the real stderr as it arrives, except the lines the
level filters: absl-format C++ log lines of a lower severity (``I...`` at 1,
``W...`` too at 2, ``E...`` too at 3; Python's absl lines, whose source is a
``.py`` file, are kept), the continuation line of the CPU-feature notice, and
absl's banner. A helper process, not a file or a thread: when the import
crashes (an abort on a CPU without the instructions TensorFlow was built
for, a scheduler's kill), the helper still drains the pipe, so TensorFlow's
fatal line and a faulthandler dump reach the console. If the helper cannot
start, the import runs unfiltered.

In bwtf's own programs (``python -m bwtf.…``, a ``bwtf-*`` console script
or a script in bwtf's ``scripts/``) the same first import also runs with scikit-learn hidden: Keras 3,
which TensorFlow 2.21 imports with itself, imports scikit-learn when it is
installed (the demo and test extras install it) for wrappers bwtf never
uses, a second of CPU at every task's start, a sixth of the import. It is
hidden for that import only: ``import sklearn`` afterwards works as usual,
but Keras's scikit-learn wrappers (``keras.wrappers.SKLearn*``) stay
unavailable in that process (Keras looks once), and a thread that imports
scikit-learn during those seconds fails. bwtf's programs use neither. A
user's own program that imports bwtf keeps Keras as it is.

Deliberately left out: anything printed after the import (a process-wide
filter would put a process between every task and its console), and
TensorFlow 2.15, which filters by itself and imports no scikit-learn.
"""
import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import subprocess
import sys

_SEVERITIES = "IWEF"
# absl's C++ log line: severity letter, MMDD, time, thread id, file:line]. Before
# absl's logging is initialized the date is 0000 and the seconds run from the epoch.
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ ([^\s\]]+):\d+\] ")
_ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The second line of the I-level cpu_feature_guard notice.
_CPU_FEATURES_CONTINUATION = b"To enable the following instructions:"
# How long the import waits, once done, for the helper to pass on the last lines.
_HELPER_DRAIN_SECS = 10


def _min_level(environ):
    """TF_CPP_MIN_LOG_LEVEL as 0..3 (0 when unset or not a number, as TensorFlow reads it)."""
    try:
        return max(0, min(3, int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))))
    except ValueError:
        return 0


def _keep(line, level, dropped_previous):
    """(keep ``line``?, is it dropped?) given whether the line before it was dropped."""
    bare = line.rstrip(b"\r\n")
    match = _ABSL_LINE.match(bare)
    if match and not match.group(2).endswith(b".py"):
        dropped = _SEVERITIES.index(match.group(1).decode()) < level
    elif bare == _ABSL_BANNER:
        dropped = True
    else:
        dropped = dropped_previous and bare.startswith(_CPU_FEATURES_CONTINUATION)
    return not dropped, dropped


def filtered(text, level):
    """``text`` (bytes) without the notices that TF_CPP_MIN_LOG_LEVEL ``level`` filters."""
    if level < 1:
        return text
    kept, dropped = [], False
    for line in text.splitlines(keepends=True):
        keep, dropped = _keep(line, level, dropped)
        if keep:
            kept.append(line)
    return b"".join(kept)


def _serve(level):
    """The helper: stdin to stdout, line by line, filtered."""
    dropped = False
    for line in sys.stdin.buffer:
        keep, dropped = _keep(line, level, dropped)
        if keep:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()


@contextlib.contextmanager
def _stderr_filtered(level):
    """Sends fd 2 through the filtering helper for the block (see the module docstring)."""
    try:
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2: nothing to filter
        yield
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:
        os.close(saved)
        yield
        return
    try:
        helper = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__), str(level)],
                                  stdin=read_end, stdout=saved, stderr=subprocess.DEVNULL)
    except (OSError, ValueError, subprocess.SubprocessError):
        helper = None
    os.close(read_end)
    if helper is None:
        os.close(write_end)
        os.close(saved)
        yield
        return
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the helper ends
        os.close(saved)
        with contextlib.suppress(subprocess.TimeoutExpired):
            helper.wait(timeout=_HELPER_DRAIN_SECS)


@contextlib.contextmanager
def _scikit_learn_hidden():
    """``import sklearn`` fails inside the block (Keras then leaves its
    wrappers out), unless it was imported before; afterwards it works."""
    if "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None
    try:
        yield
    finally:
        if "sklearn" in sys.modules and sys.modules["sklearn"] is None:
            del sys.modules["sklearn"]


class _FirstImportLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with stderr filtered (level 1 to 3) and
    scikit-learn hidden (if asked); gives the module back its real loader."""

    def __init__(self, loader, level, hide_scikit_learn):
        self._loader = loader
        self._level = level
        self._hide_scikit_learn = hide_scikit_learn

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        _uninstall()
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _stderr_filtered(self._level) if self._level >= 1 else contextlib.nullcontext(), \
                _scikit_learn_hidden() if self._hide_scikit_learn else contextlib.nullcontext():
            self._loader.exec_module(module)


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders do, with the loader above,
    until it is imported (a mere ``importlib.util.find_spec`` probe, as TFDS
    makes, does not use the hook up)."""

    def __init__(self, level, hide_scikit_learn):
        self._level = level
        self._hide_scikit_learn = hide_scikit_learn

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow" or fullname in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _FirstImportLoader(spec.loader, self._level, self._hide_scikit_learn)
        return spec


def _uninstall():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FirstTensorFlowImport)]


# bwtf's own scripts (this file is <bwtf>/estimator/_tf_notices.py).
_OWN_SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "scripts", "")


def is_bwtf_program(argv=None, orig_argv=None):
    """True in a process that runs a bwtf program: a ``bwtf-*`` console script
    (no ``.py``: a user's ``bwtf-experiment.py`` is not one), a script in
    bwtf's own ``scripts/`` (the fault harness, the benchmarks) or ``python -m
    bwtf.…`` (whose sys.argv[0] is still "-m" while bwtf is imported, hence
    the interpreter's own options in sys.orig_argv)."""
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    script = (argv[0] or "") if argv else ""
    if os.path.basename(script).startswith("bwtf-") and not script.endswith(".py"):
        return True
    if script.endswith(".py") and (os.path.dirname(os.path.realpath(script)) + os.sep).startswith(_OWN_SCRIPTS):
        return True
    words = iter(orig_argv[1:])
    for word in words:
        if word in ("-", "--") or not word.startswith("-"):
            return False  # stdin or a script: the rest are the program's own arguments
        if word.startswith("--"):
            if word == "--check-hash-based-pycs":
                next(words, None)
            continue
        # A cluster of short options: -u, -um (then the module), -mbwtf.x, -Xdev, -X dev.
        for index, letter in enumerate(word[1:], start=2):
            if letter in "XWm":
                value = word[index:] or next(words, "")
                if letter == "m":
                    return value.startswith("bwtf.")
                break
            if letter == "c":
                return False
    return False


def install(tensorflow_line, environ=None, program=None):
    """Hooks the first ``import tensorflow`` (see the module docstring); True if hooked.

    ``program``: whether this process runs a bwtf program (default: is_bwtf_program()).
    """
    level = _min_level(os.environ if environ is None else environ)
    hide_scikit_learn = is_bwtf_program() if program is None else program
    if tensorflow_line != "2.21" or (level < 1 and not hide_scikit_learn) or "tensorflow" in sys.modules:
        return False
    if not any(isinstance(finder, _FirstTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FirstTensorFlowImport(level, hide_scikit_learn))
    return True


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
