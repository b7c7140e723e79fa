"""The README's batch examples, run as written under the real localhost Slurm and the PBS harness.

"Train on Slurm": the first block is run with ``sbatch --wait`` under the
one-node Slurm on localhost (``slurm_env``, under the machine-wide Slurm lock).
"Train on PBS": the block is run through a stand-in ``qsub`` (below) that does
what a PBS server does before the job script starts, as test_launch_pbs.py's
harness does: a PBS_NODEFILE with ``select`` x ``mpiprocs`` lines, PBS_JOBID,
PBS_O_WORKDIR (the submission folder), PBS_WALLTIME from ``walltime`` and the
``-v`` variables; then it runs scripts/train.pbs (real mpiexec) in the
foreground and exits with its status. It also passes the submitting
environment on (PYTHONPATH: the bwtf under test), which PBS does only with -V.

What is substituted in each block, and nothing else (``readme_blocks.small``
fails when the README stops saying the old text):

* sizes: one node of this machine instead of 4 (Slurm: ``--nodes=1 --ntasks=4
  --cpus-per-task=1 --overcommit``; PBS: ``select=1:ncpus=4:mpiprocs=4``), one
  parameter server, and small_cnn at 32 px for 60 steps instead of resnet50
  for 450,000 (with checkpoints every 30 steps and progress every 10);
* paths: the digits dataset (``--dataset=imagenet_archive/present``) for
  /lustre/tfds, a test folder for /lustre/runs/..., this Python for
  $HOME/venv/bin/python, the script's absolute path (the job is submitted
  from a test folder, where its logs go);
* Slurm only: ``sbatch --wait``, so the test sees the job's exit status.

The GPU block needs nodes with GPUs declared as GRES, which the localhost Slurm
has not; its flags are checked here, and tests/launch/test_multinode_slurm.py
runs GRES GPU jobs on the virtual cluster.
"""
import os
import re
import stat
import subprocess
import sys

import pytest

from launch_helpers import REPO_ROOT, install_mpiexec_reason
import readme_blocks

pytestmark = [pytest.mark.slow]

_SLURM = "Train on Slurm"
_PBS = "Train on PBS (PBS Pro or Cray ALPS)"
_STEPS = "--train_steps=60 --save_checkpoints_steps=30 --log_every_steps=10 --eval_throttle_secs=5"
_QSUB = '''#!/usr/bin/env python3
"""qsub stand-in for tests: prepares what a PBS server would, then runs the job script in the foreground."""
import os, re, sys
args, env, limits = sys.argv[1:], dict(os.environ), {}
while args[0].startswith("-"):
    option, value, args = args[0], args[1], args[2:]
    if option == "-l":
        limits.update(item.split("=", 1) for item in value.split(","))
    elif option == "-v":
        env.update(item.split("=", 1) for item in value.split(","))
    else:
        sys.exit(f"qsub stand-in: unsupported option {option}")
chunks, _, spec = limits["select"].partition(":")
ranks = int(chunks) * int(re.search(r"mpiprocs=(\\d+)", spec).group(1))
hours, minutes, seconds = (int(part) for part in limits["walltime"].split(":"))
node_file = os.path.abspath("pbs-nodefile")
with open(node_file, "w") as f:
    f.write("localhost\\n" * ranks)
env.update(PBS_JOBID="4343.localhost", PBS_NODEFILE=node_file, PBS_O_WORKDIR=os.getcwd(),
           PBS_JOBNAME="bwtf-train", PBS_ENVIRONMENT="PBS_BATCH",
           PBS_WALLTIME=str(hours * 3600 + minutes * 60 + seconds))
os.execvpe("bash", ["bash", args[0]] + args[1:], env)
'''


def _sizes_and_paths(data_dir, script):
    return [
        ("$HOME/venv/bin/python", sys.executable),
        ("--model=resnet50", f"--model=small_cnn --image_size=32 {_STEPS}"),
        ("--data_dir=/lustre/tfds", f"--data_dir={data_dir} --dataset=imagenet_archive/present"),
        (f"scripts/{script}", str(REPO_ROOT / "scripts" / script)),
    ]


def _run(command, cwd, env, timeout):
    return subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _verify_final_checkpoint(model_dir):
    verified = subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(model_dir)],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    steps = [int(step) for step in re.findall(r"ckpt-(\d+)", verified.stdout)]
    assert steps and max(steps) >= 60, verified.stdout


@pytest.mark.timeout(600)
def test_the_slurm_block_runs_as_written(slurm_env, digits_data_dir, tmp_path):
    block = readme_blocks.blocks()[_SLURM][0]
    model_dir = tmp_path / "r50"
    command = readme_blocks.small(block, _sizes_and_paths(digits_data_dir, "train.sbatch") + [
        ("sbatch --nodes=4 --ntasks=9", "sbatch --wait --nodes=1 --ntasks=4 --cpus-per-task=1 --overcommit"),
        ("--num_ps=2", "--num_ps=1"),
        ("--model_dir=/lustre/runs/r50", f"--model_dir={model_dir}"),
        ("--train_steps=450000", ""),
    ])
    result = _run(command, tmp_path, slurm_env, 540)
    outputs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("bwtf-train-*.out"))
    assert result.returncode == 0, result.stdout + result.stderr + outputs
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("bwtf-logs-*/train-r0-*.log"))
    assert "cluster role chief:0 (from slurm)" in logs and "cluster role ps:0 (from slurm)" in logs
    assert re.search(r"final precision@1 0\.\d+", logs), logs[-3000:]
    _verify_final_checkpoint(model_dir)


@pytest.mark.timeout(600)
def test_the_pbs_block_runs_as_written(digits_data_dir, tmp_path):
    reason = install_mpiexec_reason()
    if reason:
        pytest.skip(reason)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qsub").write_text(_QSUB)
    (bin_dir / "qsub").chmod(stat.S_IRWXU)
    (block,) = readme_blocks.blocks()[_PBS]
    model_dir = tmp_path / "r50"
    command = readme_blocks.small(block, _sizes_and_paths(digits_data_dir, "train.pbs") + [
        ("select=4:ncpus=32:mpiprocs=5", "select=1:ncpus=4:mpiprocs=4"),
        ("--num_ps=3", "--num_ps=1"),
        ("--model_dir=/lustre/runs/r50", f"--model_dir={model_dir}"),
    ])
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("TF_CONFIG", "BWTF_WALLTIME_END", "SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS", "BWTF_FLAGS"):
        env.pop(name, None)
    result = _run(command, tmp_path, env, 540)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("bwtf-logs-4343/r0/*.log"))
    roles = set(re.findall(r"cluster role (\w+:\d) \(from (?:pbs|tf_config)\)", logs))
    assert roles == {"ps:0", "chief:0", "worker:0", "evaluator:0"}, roles
    assert re.search(r"final precision@1 0\.\d+", logs), logs[-3000:]
    _verify_final_checkpoint(model_dir)


def test_the_gpu_slurm_block_hands_bwtf_train_flags_it_accepts():
    block = readme_blocks.blocks()[_SLURM][1]
    assert "--gres=gpu:4" in block
    flags = " ".join(block.replace("\\\n", " ").split()).split("scripts/train.sbatch", 1)[1].split()
    code = ("import sys; from absl import flags; from bwtf.estimator import train; "
            "rest = flags.FLAGS(['bwtf-train'] + sys.argv[1:]); sys.exit(len(rest) - 1)")
    result = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, (flags, result.stderr[-2000:])
