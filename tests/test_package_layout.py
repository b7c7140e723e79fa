"""The installed package is `bwtf` and nothing else, and it refuses a TensorFlow it cannot run.

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

import bwtf

# This interpreter's TensorFlow line ("2.15" or "2.21"); the suite runs under either.
_OWN_LINE = bwtf.TENSORFLOW_LINE
_OTHER_VERSION = "2.21.0" if _OWN_LINE == "2.15" else "2.15.1"
needs_estimator_line = pytest.mark.skipif(
    _OWN_LINE != "2.15", reason="checks the 2.15 environment's tensorflow-estimator; the 2.21 "
    "cases are test_import_refuses_tensorflow_estimator_beside_221 and test_import_accepts_tensorflow_221_alone")

REPO = pathlib.Path(__file__).resolve().parents[1]
_TOP_LEVEL_NAMES = ("data", "estimator", "ckpt")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # Build from a copy so the checkout gets no build/ folder, and stale build
    # output cannot leak into the wheel.
    source = tmp_path_factory.mktemp("source") / "bwtf"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".venv-tf221", "build", "*.egg-info", "bazel-*", "__pycache__"))
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


def _fake_distribution(root, module, name, version):
    """A site dir in which distribution ``name`` claims ``version`` and provides ``module``."""
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(f"__version__ = '{version}'\n")
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(f"{module}\n")
    return root


def _fake_tensorflow(root, version):
    return _fake_distribution(root, "tensorflow", "tensorflow", version)


def _import_bwtf(site, python=sys.executable, code="import bwtf"):
    """Imports this tree's bwtf with ``site`` first on the path; returns the last line of stderr."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([python, "-c", code], cwd=site.parent, env=dict(os.environ, PYTHONPATH=path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("version", ["2.16.1", "2.17.0", "2.20.0", "2.22.0", "2.14.1", "3.0.0"])
def test_import_refuses_unsupported_tensorflow(tmp_path, version):
    last_line = _import_bwtf(_fake_tensorflow(tmp_path / "site", version))
    assert "UnsupportedTensorFlowError" in last_line
    assert f"bwtf needs TensorFlow 2.15.x or 2.21.x, but TensorFlow {version} is installed" in last_line
    assert "pip install 'bwtf[cpu]' (tensorflow-cpu==2.15.1" in last_line
    assert "'bwtf[cpu-tf221]' (tensorflow-cpu==2.21.0)" in last_line


def test_import_refuses_two_tensorflow_distributions_of_different_versions(tmp_path):
    # The other supported tensorflow installed over this environment's tensorflow-cpu.
    from importlib import metadata

    own = metadata.version("tensorflow-cpu")
    last_line = _import_bwtf(_fake_tensorflow(tmp_path / "site", _OTHER_VERSION))
    assert f"this environment mixes TensorFlow installs: tensorflow {_OTHER_VERSION}, tensorflow-cpu {own}" in last_line
    assert f"(Python imports TensorFlow {_OTHER_VERSION})" in last_line and "fresh virtual environment" in last_line


@needs_estimator_line
def test_import_refuses_an_estimator_of_another_version(tmp_path):
    site = _fake_distribution(tmp_path / "site", "tensorflow_estimator", "tensorflow-estimator", "2.14.0")
    last_line = _import_bwtf(site)
    assert "tensorflow-estimator 2.14.0 beside TensorFlow 2.15.1" in last_line
    assert "pip install 'tensorflow-estimator~=2.15.0'" in last_line


def test_import_accepts_tensorflow_221_alone(tf221_python):
    result = subprocess.run([tf221_python, "-c", "import bwtf; print(bwtf.TENSORFLOW_LINE)"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2.21"


def test_import_refuses_tensorflow_estimator_beside_221(tmp_path, tf221_python):
    site = _fake_distribution(tmp_path / "site", "tensorflow_estimator", "tensorflow-estimator", "2.15.0")
    last_line = _import_bwtf(site, tf221_python)
    assert ("this environment mixes TensorFlow installs: tensorflow-estimator 2.15.0 (made for TensorFlow 2.15) "
            "beside TensorFlow 2.21.0, which has no tf.estimator; pip uninstall tensorflow-estimator") in last_line


@pytest.mark.parametrize("hidden, expected", [
    ("tensorflow", "no 'tensorflow' module is installed"),
    pytest.param("tensorflow_estimator", "tensorflow-estimator is missing", marks=needs_estimator_line),
])
def test_import_names_the_missing_package(hidden, expected):
    code = f"import sys; sys.modules[{hidden!r}] = None; import bwtf"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert expected in result.stderr.strip().splitlines()[-1]


def test_import_accepts_the_pinned_tensorflow():
    result = subprocess.run(
        [sys.executable, "-c", "import bwtf, tensorflow as tf; print(tf.__version__, hasattr(tf, 'estimator'))"],
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr
    # 2.15 with its tf.estimator; 2.21 without (bwtf's runner stands in).
    assert result.stdout.strip().splitlines()[-1] == f"{_OWN_LINE}.{'1 True' if _OWN_LINE == '2.15' else '0 False'}"


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
