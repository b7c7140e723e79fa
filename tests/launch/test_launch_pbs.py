"""scripts/train.pbs end to end with a real Open MPI mpiexec and the variables PBS would set.

Debian has no PBS server, so the test plays the server's part: it writes a
PBS_NODEFILE with one line per rank (ps, chief, worker, evaluator), sets
PBS_JOBID, PBS_O_WORKDIR and PBS_WALLTIME, and runs the script. The walltime is
short enough that the chief saves before it and exits 75; the rerun (what
qrerun or a resubmission starts) resumes from that step and completes.
"""
import os
import re
import subprocess
import sys

import pytest

from launch_helpers import REPO_ROOT, install_mpiexec_reason

_SCRIPT = REPO_ROOT / "scripts" / "train.pbs"


def _pbs_env(work_dir, ranks, walltime_secs):
    node_file = work_dir / "nodefile"
    node_file.write_text("localhost\n" * ranks)
    env = dict(os.environ, PBS_JOBID="4242.pbs-server", PBS_NODEFILE=str(node_file),
               PBS_O_WORKDIR=str(work_dir), PBS_JOBNAME="bwtf-train", PBS_ENVIRONMENT="PBS_BATCH",
               PBS_WALLTIME=str(walltime_secs), BWTF_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("TF_CONFIG", "BWTF_WALLTIME_END", "SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS"):
        env.pop(name, None)
    return env


def _run_script(env, flags, timeout_secs):
    return subprocess.run(["bash", str(_SCRIPT)] + flags, env=env, capture_output=True, text=True,
                          timeout=timeout_secs)


def _chief_log(run_dir):
    for log in sorted(run_dir.glob("train-*.log")):
        text = log.read_text(errors="replace")
        if "cluster role chief:0 (from pbs)" in text:
            return text
    raise AssertionError(f"no chief log in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}")


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_pbs_job_stops_before_its_walltime_and_the_rerun_completes(digits_data_dir, tmp_path):
    reason = install_mpiexec_reason()
    if reason:
        pytest.skip(reason)
    def job_flags(name, train_steps):
        path = tmp_path / name
        path.write_text("\n".join([
            "--model=small_cnn", f"--data_dir={digits_data_dir}", "--dataset=imagenet_archive/present",
            f"--model_dir={tmp_path / 'model'}", f"--train_steps={train_steps}", "--batch_size=32",
            "--save_checkpoints_steps=500", "--log_every_steps=50", "--eval_throttle_secs=5",
            "--num_ps=1"]) + "\n")
        return path

    # 170 s of walltime minus bwtf.ckpt's 120 s margin: the chief stops about 50 s
    # in. The first run's step target is out of reach on any machine, so the
    # walltime, not the speed of this machine, is what ends it.
    first_flags = job_flags("first.flags", 10**6)
    first = _run_script(_pbs_env(tmp_path, 4, 170), [f"--flagfile={first_flags}"], 240)
    assert first.returncode == 75, first.stdout + first.stderr
    # The evaluator, still waiting for the unreachable final step, must not outlive the script.
    left = subprocess.run(["pgrep", "-af", str(first_flags)], capture_output=True, text=True)
    assert left.returncode == 1, f"processes of the first run are still running:\n{left.stdout}"
    assert "the chief saved and stopped for requeue" in first.stdout
    log_dir = tmp_path / "bwtf-logs-4242"
    first_chief = _chief_log(log_dir / "r0")
    assert re.search(r"Stopping at step \d+ after a final save: walltime", first_chief), first_chief[-3000:]
    # Async workers may add a step or two after the stop; the newest save is what counts.
    saved_step = int(re.findall(r"Saved checkpoint \S*/ckpt-(\d+)/", first_chief)[-1])
    assert saved_step > 0

    # The rerun trains a little further than the saved step, and must start exactly there.
    rerun_env = dict(_pbs_env(tmp_path, 4, 3600), BWTF_RERUN="1")
    second = _run_script(rerun_env, [f"--flagfile={job_flags('rerun.flags', saved_step + 200)}"], 300)
    assert second.returncode == 0, second.stdout + second.stderr
    chief = _chief_log(log_dir / "r1")
    assert f"resuming from {tmp_path / 'model'}/ckpt-{saved_step}/" in chief
    done = re.search(r"done: (\d+) steps \((\d+) this run\)", chief)
    assert int(done.group(1)) - int(done.group(2)) == saved_step  # Zero steps lost.
    assert re.search(r"final precision@1 0\.\d+", chief)
    roles = set(re.findall(r"cluster role (\w+:\d) \(from (?:pbs|tf_config)\)",
                           "".join(p.read_text(errors="replace") for p in (log_dir / "r1").glob("*.log"))))
    assert roles == {"ps:0", "chief:0", "worker:0", "evaluator:0"}
    verified = subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(tmp_path / "model")],
                              capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_pbs_job_whose_chief_fails_at_startup_ends_every_rank_within_seconds(digits_data_dir, tmp_path):
    reason = install_mpiexec_reason()
    if reason:
        pytest.skip(reason)
    flags = ["--model=small_cnn", "--data_dir=/nonexistent/tfds", "--dataset=imagenet_archive/present",
             f"--model_dir={tmp_path / 'model'}", "--train_steps=100", "--num_ps=1"]
    # Bounded far below the 900 s a ps used to wait for a chief that never came.
    result = _run_script(_pbs_env(tmp_path, 4, 3600), flags, 200)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "training ended with status 2" in result.stdout
    run_dir = tmp_path / "bwtf-logs-4242" / "r0"
    statuses = {p.name: p.read_text().strip() for p in (run_dir / "status").glob("task-*.status")}
    # Ranks 0-2 train on one node: the chief, a worker, and the ps on the last rank.
    assert statuses["task-0.status"] == "2" and statuses["task-2.status"] == "70", statuses
    assert statuses["task-1.status"] in ("2", "70"), statuses
    assert "the chief (rank 0) failed with status 2; stopping this task" in (run_dir / "train-2.log").read_text()
    left = subprocess.run(["pgrep", "-af", "/nonexistent/tfds"], capture_output=True, text=True)
    assert left.returncode == 1, f"processes of the job are still running:\n{left.stdout}"


@pytest.mark.parametrize("change, message", [
    ({"PBS_NODEFILE": "/nonexistent/nodefile"}, "PBS_NODEFILE '/nonexistent/nodefile' is not a readable file"),
    ({"PBS_JOBID": ""}, "PBS_JOBID is not set"),
    ({"BWTF_EVALUATOR": "yes"}, "BWTF_EVALUATOR must be 0 or 1; found 'yes'"),
])
def test_pbs_script_refuses_a_bad_environment(change, message, tmp_path):
    env = dict(_pbs_env(tmp_path, 4, 3600), **change)
    result = _run_script(env, ["--model=small_cnn"], 60)
    assert result.returncode == 2
    assert message in result.stderr


def test_pbs_script_refuses_too_few_ranks(tmp_path):
    result = _run_script(_pbs_env(tmp_path, 2, 3600), ["--model=small_cnn"], 60)
    assert result.returncode == 2
    assert "PBS_NODEFILE lists 2 rank(s); a training cluster needs at" in result.stderr
