"""The installed package is `bwtf` and nothing else, and it refuses TensorFlow >= 2.16.

The repository root is the package (``package_dir={"bwtf": "."}``), which makes it
easy to ship ``data``, ``estimator`` or ``ckpt`` as top-level packages by mistake:
they would then shadow (or be shadowed by) another project's own ``data`` package.
These tests build the real wheel and import it next to such a project.
"""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_TOP_LEVEL_NAMES = ("data", "estimator", "ckpt")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Build from a copy so the checkout gets no build/ folder, and stale build
    # output cannot leak into the wheel.
    source = tmp_path_factory.mktemp("source") / "bwtf"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "bazel-*", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (path,) = out.glob("bwtf-*.whl")
    return path


def test_wheel_holds_only_the_bwtf_package(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = archive.read(next(n for n in names if n.endswith("top_level.txt")))
    roots = {name.split("/")[0] for name in names}
    assert roots == {"bwtf", "bwtf-0.1.0.dist-info"}, roots
    assert top_level.decode().split() == ["bwtf"]
    for sub in _TOP_LEVEL_NAMES:
        assert f"bwtf/{sub}/__init__.py" in names
    assert not any(name.startswith("bwtf/tests/") for name in names), "tests must not be installed"
    assert "bwtf/setup.py" not in names, "setup.py must not be importable as bwtf.setup"


def test_wheel_declares_every_console_script(wheel):
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read("bwtf-0.1.0.dist-info/entry_points.txt").decode()
    for script, module in [
        ("bwtf-train", "bwtf.estimator.train"), ("bwtf-eval", "bwtf.estimator.evaluate"),
        ("bwtf-export", "bwtf.estimator.export"), ("bwtf-launch", "bwtf.estimator.launch"),
        ("bwtf-build-data", "bwtf.data.build"), ("bwtf-ckpt", "bwtf.ckpt.cli"),
        ("bwtf-report", "bwtf.estimator.report"),
    ]:
        assert f"{script} = {module}:run" in entry_points


def _user_project(root):
    """A project with its own top-level data/estimator/ckpt packages."""
    for name in _TOP_LEVEL_NAMES:
        package = root / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f"OWNER = 'user-{name}'\n")
    return root


_IMPORT_BOTH = """
import data, estimator, ckpt
import bwtf, bwtf.ckpt, bwtf.estimator
assert data.OWNER == 'user-data', data.__file__
assert estimator.OWNER == 'user-estimator', estimator.__file__
assert ckpt.OWNER == 'user-ckpt', ckpt.__file__
assert not hasattr(bwtf.ckpt, 'OWNER')
print(bwtf.__file__)
"""


def test_installed_wheel_coexists_with_a_users_data_package(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True,
    )
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) in (["bwtf"], ["bin", "bwtf"])
    project = _user_project(tmp_path / "project")
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", _IMPORT_BOTH], cwd=project, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target / "bwtf"))


def test_development_install_coexists_with_a_users_data_package(tmp_path):
    project = _user_project(tmp_path / "project")
    result = subprocess.run([sys.executable, "-c", _IMPORT_BOTH], cwd=project,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _fake_tensorflow(root, version):
    """A site dir whose `tensorflow` distribution claims `version`."""
    (root / "tensorflow").mkdir(parents=True)
    (root / "tensorflow" / "__init__.py").write_text(f"__version__ = '{version}'\n")
    info = root / f"tensorflow-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: tensorflow\nVersion: {version}\n")
    (info / "top_level.txt").write_text("tensorflow\n")
    return root


@pytest.mark.parametrize("version, expected", [
    ("2.16.1", "tf.estimator, which bwtf is built on, was removed in TensorFlow 2.16"),
    ("2.17.0", "TensorFlow 2.17.0 is installed"),
    ("2.14.1", "bwtf needs TensorFlow 2.15.x, but TensorFlow 2.14.1 is installed"),
])
def test_import_refuses_unsupported_tensorflow(tmp_path, version, expected):
    site = _fake_tensorflow(tmp_path / "site", version)
    result = subprocess.run([sys.executable, "-c", "import bwtf"], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True, text=True)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert "UnsupportedTensorFlowError" in last_line
    assert expected in last_line
    assert "pip install 'bwtf[cpu]'" in last_line


@pytest.mark.parametrize("hidden, expected", [
    ("tensorflow", "no 'tensorflow' module is installed"),
    ("tensorflow_estimator", "tensorflow-estimator is missing"),
])
def test_import_names_the_missing_package(hidden, expected):
    code = f"import sys; sys.modules[{hidden!r}] = None; import bwtf"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert expected in result.stderr.strip().splitlines()[-1]


def test_import_accepts_the_pinned_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", "import bwtf, tensorflow as tf; print(tf.__version__); tf.estimator.Estimator"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("2.15.")


_TOP_LEVEL = {
    # The design: the package's folders, the build and project files.
    "estimator", "data", "ckpt", "scripts", "tests",
    "WORKSPACE", "BUILD", "setup.py", "README.md", "ARCHITECTURE.md", ".ci",
    # Small conventional files.
    "__init__.py", "program.py", "pyproject.toml", ".gitignore", ".bazelrc", ".bazelversion", ".bazelignore",
}


def test_top_level_holds_only_the_designed_entries():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the tracked top-level entries cannot be listed")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True,
                             text=True).stdout.split()
    top_level = {path.split("/")[0] for path in tracked}
    assert top_level <= _TOP_LEVEL, f"unexpected top-level entries: {sorted(top_level - _TOP_LEVEL)}"
    assert {"estimator", "data", "ckpt", "scripts", "tests", "WORKSPACE", "setup.py"} <= top_level


@pytest.mark.parametrize("script, flag", [
    ("bwtf-train", "--model_dir"), ("bwtf-eval", "--output_json"), ("bwtf-export", "--export_dir"),
    ("bwtf-report", "--output_dir"), ("bwtf-launch", "--num_ps"), ("bwtf-build-data", "--manual_dir"),
    ("bwtf-ckpt", "--keep_last"),
])
def test_console_script_help_lists_the_programs_own_flags(script, flag):
    # absl's --help shows only the main module's flags; for a console script
    # that is pip's wrapper, so without bwtf.show_program_flags_in_help it is empty.
    path = pathlib.Path(sys.executable).parent / script
    if not path.exists():
        pytest.skip(f"{script} is not installed next to {sys.executable}; pip install -e . first")
    result = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    # absl's --help exits with 1 after printing; what matters is what it printed.
    assert "Traceback" not in result.stderr, result.stderr
    assert f"  {flag}" in result.stdout, result.stdout
