"""TensorFlow 2.21's C++ start-up notices, kept off the console when TF_CPP_MIN_LOG_LEVEL asks for that.

TensorFlow 2.21 logs through absl before absl's logging is initialized, and
what it logs then ignores ``TF_CPP_MIN_LOG_LEVEL``: every process prints
absl's banner "WARNING: All log messages before absl::InitializeLog() is
called are written to STDERR" and the oneDNN notice, twice, while ``import
tensorflow`` runs (TensorFlow 2.15 honours the variable). A localhost job of
four tasks put 16 such lines among bwtf's own.

``install(line)`` (called by ``bwtf/__init__.py``) does nothing unless the
installed TensorFlow is 2.21 and ``TF_CPP_MIN_LOG_LEVEL`` is 1 or more. Then
the first ``import tensorflow`` writes its file-descriptor-level stderr into
an unnamed file, which is written back once the import ends, without the
lines that the level filters: absl-format C++ log lines of a lower severity
(``I...`` at 1, ``W...`` too at 2, ``E...`` too at 3), the continuation line
of the CPU-feature notice, and absl's banner. Everything else (Python
warnings, errors, a traceback) is written back unchanged and in order, also
when the import fails or is interrupted.

Deliberately left out: anything printed after the import (filtering it would
need a process-wide stderr pipe, which would lose a crashing process's last
lines), and TensorFlow 2.15, which filters by itself.
"""
import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile

_SEVERITIES = "IWEF"
# absl's C++ log line: severity letter, MMDD, time, thread id, file:line]. Before
# absl's logging is initialized the date is 0000 and the seconds run from the epoch.
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s\]]+:\d+\] ")
_ABSL_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The second line of the I-level cpu_feature_guard notice.
_CPU_FEATURES_CONTINUATION = b"To enable the following instructions:"


def _min_level(environ):
    """TF_CPP_MIN_LOG_LEVEL as 0..3 (0 when unset or not a number, as TensorFlow reads it)."""
    try:
        return max(0, min(3, int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))))
    except ValueError:
        return 0


def filtered(text, level):
    """``text`` (bytes) without the notices that TF_CPP_MIN_LOG_LEVEL ``level`` filters."""
    if level < 1:
        return text
    kept = []
    dropped_previous = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip(b"\r\n")
        match = _ABSL_LINE.match(bare)
        if match:
            dropped_previous = _SEVERITIES.index(match.group(1).decode()) < level
        elif bare == _ABSL_BANNER:
            dropped_previous = True
        else:
            dropped_previous = dropped_previous and bare.startswith(_CPU_FEATURES_CONTINUATION)
        if not dropped_previous:
            kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def _stderr_filtered(level):
    """Sends fd 2 to an unnamed file for the block, then writes it back filtered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = filtered(sink.read(), level)
            with contextlib.suppress(OSError), os.fdopen(os.dup(2), "wb") as stderr:
                stderr.write(text)


class _FilteredLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with stderr filtered; gives the module back its real loader."""

    def __init__(self, loader, level):
        self._loader = loader
        self._level = level

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        with _stderr_filtered(self._level):
            self._loader.exec_module(module)


class _FirstTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, as the other finders do, with a filtering loader."""

    def __init__(self, level):
        self._level = level

    def find_spec(self, fullname, path, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _FilteredLoader(spec.loader, self._level)
        return spec


def install(tensorflow_line, environ=None):
    """Filters the first ``import tensorflow`` (see the module docstring); True if installed."""
    level = _min_level(os.environ if environ is None else environ)
    if tensorflow_line != "2.21" or level < 1 or "tensorflow" in sys.modules:
        return False
    if not any(isinstance(finder, _FirstTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _FirstTensorFlowImport(level))
    return True
