"""scripts/build_dataset.sbatch and .pbs run the build with the scheduler's CPU count."""
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture
def fake_srun(tmp_path):
    """A PATH whose `srun` drops its own options and runs the command (no Slurm here)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nexec "$@"\n')
    srun.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def _run(script, args, env):
    return subprocess.run(["bash", str(SCRIPTS / script)] + args, capture_output=True, text=True,
                          env={**os.environ, "BWTF_PYTHON": sys.executable, **env}, timeout=240)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("script", ["build_dataset.sbatch", "build_dataset.pbs"])
def test_job_script_builds_the_dataset(script, tiny_archives, fake_srun, tmp_path):
    flags = [f"--manual_dir={tiny_archives['fall11']}", f"--data_dir={tmp_path / 'tfds'}", "--class_set=present",
             "--images_per_class=2"]
    if script.endswith(".sbatch"):
        # The flag after the default --num_workers=4 wins, so no Beam is needed.
        result = _run(script, flags + ["--num_workers=1"], {"PATH": fake_srun, "SLURM_CPUS_PER_TASK": "4", "BWTF_TMPDIR": str(tmp_path)})
    else:
        result = _run(script, [], {"BWTF_FLAGS": " ".join(flags + ["--num_workers=1"]), "NCPUS": "4",
                                   "PBS_O_WORKDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "up to 4 worker(s)" in result.stdout
    assert "examples: train 20, validation 10 (total 30)" in result.stdout
    assert (tmp_path / "tfds" / "imagenet_archive" / "present-per_class_2" / "1.0.0" / "bad_images.json").exists()


@pytest.mark.parametrize("script, env, message", [
    ("build_dataset.sbatch", {"BWTF_PYTHON": "/nonexistent/python"}, "cannot import bwtf.data"),
    ("build_dataset.pbs", {"BWTF_PYTHON": "/nonexistent/python"}, "cannot import bwtf.data"),
    ("build_dataset.pbs", {}, "no build flags; set BWTF_FLAGS"),
    ("build_dataset.sbatch", {"BWTF_TMPDIR": "/nonexistent/scratch"}, "is not a writable directory"),
    ("build_dataset.pbs", {"BWTF_TMPDIR": "/nonexistent/scratch", "BWTF_FLAGS": "--manual_dir=x"},
     "is not a writable directory"),
])
def test_job_script_errors_are_explained(script, env, message, tmp_path):
    result = _run(script, [], {"PBS_O_WORKDIR": str(tmp_path), **env})
    assert result.returncode == 2 and message in result.stderr


def test_a_non_numeric_cpu_count_is_refused_by_the_flag_parser(tmp_path):
    result = _run("build_dataset.pbs", [], {"PBS_O_WORKDIR": str(tmp_path), "NCPUS": "lots",
                                            "BWTF_FLAGS": f"--manual_dir={tmp_path} --data_dir={tmp_path}/out"})
    assert result.returncode != 0 and "--num_workers" in result.stderr and "Traceback" not in result.stderr
