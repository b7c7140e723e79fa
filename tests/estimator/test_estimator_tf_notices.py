"""TensorFlow 2.21's C++ start-up notices and TF_CPP_MIN_LOG_LEVEL (estimator/_tf_notices.py).

The filter is checked on the lines TensorFlow 2.21 really prints (a 2.21
interpreter from the ``tf221_python`` fixture) and, line by line, on what it
must keep: Python warnings and absl lines, errors, tracebacks, the output of
a failed import, and the last lines of a process that aborts in the middle.
"""
import os
import pathlib
import subprocess
import sys

import pytest

from bwtf.estimator import _tf_notices

_SCRIPTS = pathlib.Path(_tf_notices.__file__).resolve().parent.parent / "scripts"

_BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
_ONEDNN = (b"I0000 00:00:1796153953.005751   20796 port.cc:153] oneDNN custom operations are on. "
           b"You may see slightly different numerical results.\n")
_CPU = (b"I1201 19:39:12.969559   20792 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n")
_WARNING = b"W1201 19:39:12.969559   20792 gpu_device.cc:2342] Cannot dlopen some GPU libraries.\n"
_ERROR = b"E1201 19:39:12.969559   20792 cuda_blas.cc:1407] Unable to register cuBLAS factory.\n"
_PYTHON = b"/x/google/api_core/_python_version_support.py:273: FutureWarning: upgrade Python\n  warnings.warn(message)\n"
_PYTHON_ABSL = b"I1201 19:39:25.519345 140408235744128 task.py:344] task worker:0 started\n"
_TRACEBACK = b"Traceback (most recent call last):\n  File \"<string>\", line 1\nImportError: libcudart.so.12\n"


@pytest.mark.parametrize("level, kept", [
    (0, _BANNER + _ONEDNN + _CPU + _WARNING + _ERROR + _PYTHON + _PYTHON_ABSL + _TRACEBACK),
    (1, _WARNING + _ERROR + _PYTHON + _PYTHON_ABSL + _TRACEBACK),
    (2, _ERROR + _PYTHON + _PYTHON_ABSL + _TRACEBACK),
    (3, _PYTHON + _PYTHON_ABSL + _TRACEBACK),
])
def test_each_level_drops_the_lower_severities_and_keeps_everything_else(level, kept):
    """Python's own absl lines (a .py source) are never TensorFlow's C++ notices."""
    text = _BANNER + _ONEDNN + _CPU + _WARNING + _ERROR + _PYTHON + _PYTHON_ABSL + _TRACEBACK
    assert _tf_notices.filtered(text, level) == kept


def test_a_line_like_the_continuation_is_kept_after_a_kept_line():
    text = _ERROR + b"To enable the following instructions: is part of this error\n"
    assert _tf_notices.filtered(text, 1) == text


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("9", 3), ("-2", 0), ("", 0), ("x", 0)])
def test_tf_cpp_min_log_level_is_read_as_tensorflow_reads_it(value, expected):
    assert _tf_notices._min_level({"TF_CPP_MIN_LOG_LEVEL": value}) == expected  # pylint: disable=protected-access


@pytest.mark.parametrize("line, environ", [
    ("2.15", {"TF_CPP_MIN_LOG_LEVEL": "2"}),  # 2.15 honours the variable itself
    ("2.21", {}),
    ("2.21", {"TF_CPP_MIN_LOG_LEVEL": "0"}),
    (None, {"TF_CPP_MIN_LOG_LEVEL": "1"}),
])
def test_nothing_is_filtered_unless_asked_on_2_21(line, environ):
    assert not _tf_notices.install(line, environ, program=False)
    if line != "2.21":  # Nor is scikit-learn hidden from a bwtf program on 2.15.
        assert not _tf_notices.install(line, environ, program=True)


@pytest.mark.parametrize("argv, orig_argv, expected", [
    (["-m"], ["python", "-X", "importtime", "-m", "bwtf.estimator.train", "--model=x"], True),
    (["/venv/bin/bwtf-train", "--model=x"], ["python", "/venv/bin/bwtf-train", "--model=x"], True),
    (["-c"], ["python", "-c", "import bwtf"], False),
    (["my_train.py"], ["python", "my_train.py", "-m", "bwtf.x"], False),
    (["-m"], ["python", "-m", "pytest", "tests"], False),
    ([""], ["python"], False),
    (["-m"], ["python", "-mbwtf.estimator.train"], True),
    (["-m"], ["python", "-um", "bwtf.estimator.train"], True),
    (["-m"], ["python", "-Xdev", "-Wignore", "-I", "-m", "bwtf.estimator.train"], True),
    (["-m"], ["python", "--check-hash-based-pycs", "always", "-m", "bwtf.estimator.train"], True),
    (["-m"], ["python", "-m", "mypkg", "-m", "bwtf.estimator.train"], False),
    (["-"], ["python", "-", "-m", "bwtf.x"], False),
    (["bwtf-experiment.py"], ["python", "bwtf-experiment.py"], False),
    ([str(_SCRIPTS / "crash_consistency.py"), "--writer"], ["python", str(_SCRIPTS / "crash_consistency.py")], True),
    ([str(_SCRIPTS / "benchmarks" / "bench_ckpt.py")], ["python", str(_SCRIPTS / "benchmarks" / "bench_ckpt.py")],
     True),
    ([str(_SCRIPTS.parent / "tests" / "ckpt" / "ckpt_task.py")], ["python", "tests/ckpt/ckpt_task.py"], False),
    ([str(_SCRIPTS) + "-mine/x.py"], ["python", str(_SCRIPTS) + "-mine/x.py"], False),
    (["-c"], ["python", "-uc", "import bwtf", "-m", "bwtf.x"], False),
])
def test_bwtf_programs_are_told_from_other_programs(argv, orig_argv, expected):
    assert _tf_notices.is_bwtf_program(argv, orig_argv) is expected


def test_scikit_learn_is_hidden_for_the_block_only():
    """Inside the block ``import sklearn`` fails as if it were not installed (Keras's
    wrappers then leave it out); after it, it imports as usual."""
    program = (
        "from bwtf.estimator import _tf_notices\n"
        "with _tf_notices._scikit_learn_hidden():\n"
        "    try:\n"
        "        import sklearn\n"
        "        print('inside: imported')\n"
        "    except ImportError:\n"
        "        print('inside: hidden')\n"
        "try:\n"
        "    with _tf_notices._scikit_learn_hidden():\n"
        "        raise KeyboardInterrupt\n"  # As an import interrupted half-way.
        "except KeyboardInterrupt:\n"
        "    pass\n"
        "import sklearn.base\n"
        "print('after:', sklearn.base.BaseEstimator.__name__)\n"
        "with _tf_notices._scikit_learn_hidden():\n"  # Imported before: left alone.
        "    import sklearn.utils\n"
        "    print('imported before:', sklearn.utils.__name__)\n")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["inside: hidden", "after: BaseEstimator", "imported before: sklearn.utils"]


def _imported(tf221_python, args, level):
    """{module: cumulative import microseconds} of a 2.21 process (python -X importtime)."""
    result = subprocess.run([tf221_python, "-X", "importtime", *args], capture_output=True, text=True,
                            timeout=240, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL=level))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line.split("|") for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {row[2].strip(): int(row[1]) for row in rows if row[1].strip().isdigit()}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("level", ["0", "2"])  # Without the notice filter, and with it.
def test_a_bwtf_program_imports_tensorflow_2_21_without_scikit_learn(tf221_python, level):
    """Keras 3 imports scikit-learn with TensorFlow 2.21 when it is installed (the
    test extra installs it), for a second of CPU: not in a bwtf program; a user's
    own program that imports bwtf keeps Keras as it is."""
    program = _imported(tf221_python, ["-m", "bwtf.estimator.train", "--help"], level)
    user = _imported(tf221_python, ["-c", "import bwtf, tensorflow"], level)
    assert "tensorflow" in program and "tensorflow" in user
    assert "sklearn.base" in user
    assert "sklearn.base" not in program


def _run_filtered_block(body):
    """Runs ``body`` (lines of Python) inside _stderr_filtered(1) in a fresh interpreter."""
    script = "import os, sys\nfrom bwtf.estimator import _tf_notices\nwith _tf_notices._stderr_filtered(1):\n"
    script += "".join(f"    {line}\n" for line in body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, check=False, timeout=120)


def test_a_failed_block_keeps_its_errors_in_order_and_drops_only_the_notices():
    """Through fd 2 (as the C++ code writes) and sys.stderr (as Python writes), with an exception."""
    run = _run_filtered_block([
        f"os.write(2, {_BANNER + _ONEDNN!r})",
        "sys.stderr.write('python says first\\n'); sys.stderr.flush()",
        f"os.write(2, {_ERROR!r})",
        "raise ImportError('libcudart.so.12')"])
    assert run.returncode == 1
    lines = run.stderr.splitlines(keepends=True)
    assert lines[:2] == [b"python says first\n", _ERROR], run.stderr
    assert b"ImportError: libcudart.so.12" in run.stderr and b"oneDNN" not in run.stderr


@pytest.mark.parametrize("death", ["os.abort()", "os.kill(os.getpid(), 9)"])
def test_a_process_that_dies_inside_the_block_still_shows_its_last_lines(death):
    """A TensorFlow built for instructions this CPU lacks aborts during the import: its fatal
    line must reach the console (the filter's helper process drains the pipe after the death)."""
    fatal = b"F1201 19:39:12.969559   20792 cpu_feature_guard.cc:50] The TensorFlow library was compiled to use AVX512F instructions, but these aren't available on your machine.\n"
    run = _run_filtered_block([f"os.write(2, {_ONEDNN + fatal!r})", death])
    assert run.returncode < 0
    assert run.stderr == fatal, run.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("level", ["0", "1"])
def test_tensorflow_2_21_start_up_notices_follow_tf_cpp_min_log_level(tf221_python, level):
    """The real import under 2.21: the notices are there at 0 (so the filter
    sees the real format) and gone at 1, with the module and its loader intact."""
    # TFDS probes with importlib.util.find_spec before it imports: the probe must not use up the filter.
    script = ("import importlib.util, bwtf\n"
              "assert importlib.util.find_spec('tensorflow') is not None\n"
              "import tensorflow as tf\n"
              "print(tf.__version__, type(tf.__loader__).__name__, tf.constant(2).numpy())\n")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=level, CUDA_VISIBLE_DEVICES="")
    run = subprocess.run([tf221_python, "-c", script], capture_output=True, text=True, env=env,
                         timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    version, loader, value = run.stdout.split()
    assert version.startswith("2.21.") and loader == "SourceFileLoader" and value == "2"
    notices = [line for line in run.stderr.splitlines() if "InitializeLog" in line or "oneDNN" in line]
    if level == "0":
        assert len(notices) >= 2, run.stderr[-2000:]
    else:
        assert notices == [], run.stderr[-2000:]
