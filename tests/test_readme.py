"""The README's commands, run as a new user would type them (at small settings).

Each ```bash block of README.md is either run here or named in ``_NOT_RUN`` with the
reason; a new block fails ``test_every_readme_block_is_run_or_explained`` until it
is one or the other. Small settings are textual replacements (``_SMALL``) that must
each still match the README, so the README cannot drift away from what runs.

* The first command, ``bash scripts/demo.sh`` (after installation): exit 0, at most
  60 console lines, none of them TensorFlow's own log lines or a traceback.
* "On one machine": the whole block, /tmp replaced by a test folder.
* The build commands, with the digits archive as manual_dir.
* The batch examples ("Train on Slurm", "Train on PBS"): run under the real
  localhost Slurm and the mpiexec harness, in tests/launch/test_launch_readme.py.
"""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import readme_blocks

REPO = readme_blocks.REPO
_BIN = pathlib.Path(sys.executable).parent
_MAX_DEMO_LINES = 60
# Lines the console must never show: TensorFlow's and absl's own log prefixes, Python's.
_NOISE = re.compile(r"(^|\] )([IWEF]\d{4} |\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] |WARNING:tensorflow|"
                    r"Traceback \(most recent call last\))")
_NOT_RUN = {
    "The two commands": "command 1 is test_demo_console_is_short; command 2 is this suite",
    "Install": "it installs into a virtualenv; CI runs scripts/install.sh on a fresh machine",
    "Bazel": "CI runs scripts/bazel_smoke.sh; it installs Bazel",
    "Fine-tune from another run": "tests/eval/test_eval_run_record.py fine-tunes with --warm_start_from "
                                  "onto a class subset built with bwtf.data",
    "Try it on several (virtual) nodes": "needs root and namespaces; tests/launch runs the same script "
                                         "(virtual_cluster.sh) with Slurm across the nodes",
}


def _env(tmp_path):
    env = dict(os.environ, PATH=f"{_BIN}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="1")
    env.pop("TF_CONFIG", None)
    return env


def _bash(script, tmp_path, timeout=1800):
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=_env(tmp_path),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_every_readme_block_is_run_or_explained():
    covered = set(_NOT_RUN) | {"On one machine", "Build the dataset from a real ImageNet archive",
                               "Train on Slurm", "Train on PBS (PBS Pro or Cray ALPS)"}
    missing = set(readme_blocks.blocks()) - covered
    assert not missing, f"README sections with commands no test runs: {missing}"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_console_is_short(tmp_path):
    assert "bash scripts/demo.sh" in readme_blocks.blocks()["The two commands"][0]
    env = dict(_env(tmp_path), BWTF_DEMO_SKIP_INSTALL="1", BWTF_DEMO_OUT=str(tmp_path / "demo"))
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=1800)
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 0, "\n".join(lines[-60:])
    assert len(lines) <= _MAX_DEMO_LINES, f"{len(lines)} console lines:\n" + "\n".join(lines)
    noise = [line for line in lines if _NOISE.search(line)]
    assert not noise, "\n".join(noise)
    assert "precision@1 on the validation split" in result.stdout
    assert list((tmp_path / "demo" / "model" / "logs").glob("*.log"))  # the full logs went to files


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_on_one_machine_block_runs_as_written(tmp_path):
    (block,) = readme_blocks.blocks()["On one machine"]
    script = readme_blocks.small(block, [("--train_steps=2000", "--train_steps=40 --save_checkpoints_steps=20 "
                                                   "--eval_throttle_secs=1")])
    _bash(script.replace("/tmp/", f"{tmp_path}/"), tmp_path)
    assert (tmp_path / "eval.json").exists()
    assert list((tmp_path / "export").glob("*/saved_model.pb"))  # a numbered version folder
    assert sorted(p.name for p in (tmp_path / "run" / "report").glob("*.png"))
    assert (tmp_path / "run" / "logs" / "chief.log").exists()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_build_commands_run_as_written(tmp_path):
    (block,) = readme_blocks.blocks()["Build the dataset from a real ImageNet archive"]
    commands = [line for line in block.splitlines() if line.startswith(("bwtf-build-data", "tfds build"))]
    runnable = [c for c in commands if not c.endswith("\\")]  # the Beam/Flink one needs a Flink cluster
    assert len(runnable) == 3, commands
    if importlib.util.find_spec("apache_beam") is None:
        # TFDS 4.9.10's CLI (the TensorFlow 2.21 stack) imports apache_beam at start-up,
        # and Beam cannot be installed beside 2.21: the README says so on that line.
        (tfds_line,) = [c for c in runnable if c.startswith("tfds build")]
        assert "needs Apache Beam" in block.split(tfds_line)[0].splitlines()[-1]
        runnable.remove(tfds_line)
    _bash(f"python -m bwtf.data.sample_archive --out={tmp_path}/imagenet", tmp_path)
    for number, command in enumerate(runnable):
        _bash(command.replace("/lustre/imagenet", f"{tmp_path}/imagenet")
              .replace("/lustre/tfds", f"{tmp_path}/tfds{number}").replace("--num_workers=16", "--num_workers=2"),
              tmp_path)
        assert list((tmp_path / f"tfds{number}" / "imagenet_archive").glob("*/1.0.0/dataset_info.json"))
