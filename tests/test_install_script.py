"""scripts/install.sh refuses what cannot install together, with one line and exit 2, before touching a venv.

The successful installs (a fresh venv per TensorFlow extra, then ``pip check``)
download TensorFlow and run in CI, not here.
"""
import os
import pathlib
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _install(tmp_path, **env):
    venv = tmp_path / "venv"
    result = subprocess.run(["bash", str(REPO / "scripts" / "install.sh")], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, BWTF_VENV=str(venv), **env))
    assert not venv.exists(), "nothing may be installed after a refusal"
    return result


@pytest.mark.parametrize("extras, expected", [
    ("cpu,cpu-tf221,test", "names more than one TensorFlow extra (cpu cpu-tf221)"),
    ("gpu,cpu", "names more than one TensorFlow extra (gpu cpu)"),
    ("cpu-tf221,beam,test", "the beam extra cannot be installed beside TensorFlow 2.21"),
    ("gpu-tf221,beam", "the beam extra cannot be installed beside TensorFlow 2.21"),
])
def test_refuses_extras_that_cannot_install_together(tmp_path, extras, expected):
    result = _install(tmp_path, BWTF_EXTRAS=extras)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


@pytest.mark.parametrize("extras, python, expected", [
    ("cpu,test", "/nonexistent/python3.12", "bwtf needs Python 3.9-3.11 (TensorFlow 2.15)"),
    ("cpu-tf221,test", "/nonexistent/python3.9", "bwtf needs Python 3.10-3.13 (TensorFlow 2.21)"),
])
def test_refuses_a_python_the_tensorflow_extra_cannot_run(tmp_path, extras, python, expected):
    result = _install(tmp_path, BWTF_EXTRAS=extras, BWTF_PYTHON=python)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and expected in result.stderr
