"""scripts/train.sbatch on a real one-node Slurm (slurmctld + slurmd + munge on localhost).

The ``slurm_env`` fixture (conftest.py) starts it with slurm_localhost.sh,
which installs Debian's slurm-wlm and munge when absent, under the machine-wide
Slurm lock, and tears it down after the module. The job has four
tasks (ps, chief, worker and the evaluator) and trains small_cnn on the digits
archive. The second job is sent ``scancel --signal=TERM`` mid-training and must
save at that step, requeue itself, resume from that step and complete.
"""
import re
import subprocess
import sys
import time

import pytest

from launch_helpers import REPO_ROOT, wait_for_job_state

pytestmark = [pytest.mark.slow]

_SBATCH = REPO_ROOT / "scripts" / "train.sbatch"


def _submit(job_dir, env, data_dir, train_steps, save_steps):
    job_dir.mkdir()
    flagfile = job_dir / "job.flags"
    flagfile.write_text("\n".join([
        "--model=small_cnn", f"--data_dir={data_dir}", "--dataset=imagenet_archive/present",
        f"--model_dir={job_dir / 'model'}", f"--train_steps={train_steps}", "--batch_size=32",
        f"--save_checkpoints_steps={save_steps}", "--log_every_steps=25", "--eval_throttle_secs=5",
        "--num_ps=1"]) + "\n")
    result = subprocess.run(
        ["sbatch", "--parsable", "--ntasks=4", "--cpus-per-task=1", "--overcommit", str(_SBATCH), f"--flagfile={flagfile}"],
        cwd=job_dir, env=env, capture_output=True, text=True, timeout=60, check=True)
    return result.stdout.strip().split(";")[0]


def _chief_log(job_dir, job_id, restart):
    """The log of the task that says it is the chief (rank 0)."""
    for log in sorted((job_dir / f"bwtf-logs-{job_id}").glob(f"train-r{restart}-*.log")):
        text = log.read_text(errors="replace")
        if "cluster role chief:0 (from slurm)" in text:
            return text
    raise AssertionError(f"no chief log for run {restart} of job {job_id} in {job_dir}")


def _verify(model_dir):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(model_dir)],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(300)
def test_sbatch_job_with_ps_chief_worker_evaluator_completes(slurm_env, digits_data_dir, tmp_path):
    job_dir = tmp_path / "job"
    job_id = _submit(job_dir, slurm_env, digits_data_dir, train_steps=200, save_steps=50)
    state, _ = wait_for_job_state(job_id, slurm_env, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 240)
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "COMPLETED", batch_log
    chief = _chief_log(job_dir, job_id, 0)
    assert re.search(r"final precision@1 0\.\d+", chief)
    evaluator = (job_dir / f"bwtf-logs-{job_id}" / "evaluator-r0.log").read_text(errors="replace")
    assert "precision_at_1 = " in evaluator
    ps_logs = [p.read_text(errors="replace") for p in (job_dir / f"bwtf-logs-{job_id}").glob("train-r0-*.log")]
    assert any("the chief finished with status 0; this ps exits with 0" in text for text in ps_logs)
    verified = _verify(job_dir / "model")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "ckpt-20" in verified.stdout  # The final step, 200 or a step or two past it.


@pytest.mark.timeout(420)
def test_sbatch_job_stopped_by_sigterm_saves_requeues_and_resumes(slurm_env, digits_data_dir, tmp_path):
    job_dir = tmp_path / "job"
    # Far more steps than the ~100 this test waits for, so that the TERM lands
    # mid-training however fast the machine is.
    job_id = _submit(job_dir, slurm_env, digits_data_dir, train_steps=1000, save_steps=1000)
    chief_log = job_dir / f"bwtf-logs-{job_id}" / "train-r0-0.log"
    deadline = time.monotonic() + 180
    while not (chief_log.exists() and re.search(r"step (1\d\d|[2-9]\d\d)/1000", chief_log.read_text())):
        assert time.monotonic() < deadline, "training did not reach step 100 within 180s"
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=TERM", job_id], env=slurm_env, check=True, timeout=30)

    # Slurm holds a requeued job for about two minutes; the test releases it at once.
    def release():
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm_env,
                       capture_output=True, timeout=30)

    wait_for_job_state(job_id, slurm_env, {"PENDING", "RUNNING"}, 60)
    state, restarts = wait_for_job_state(job_id, slurm_env, {"COMPLETED", "FAILED", "CANCELLED"}, 300,
                                      on_pending=release)
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "COMPLETED" and restarts == 1, batch_log
    assert "the chief saved and stopped for requeue" in batch_log

    first_chief = _chief_log(job_dir, job_id, 0)
    assert re.search(r"Stopping at step \d+ after a final save: SIGTERM", first_chief), \
        "the chief of run 0 did not save and stop on SIGTERM"
    saved_step = int(re.findall(r"Saved checkpoint \S*/ckpt-(\d+)/", first_chief)[-1])
    assert saved_step < 900  # Stopped mid-training, not near the end.
    resumed = _chief_log(job_dir, job_id, 1)
    assert f"resuming from {job_dir / 'model'}/ckpt-{saved_step}/" in resumed
    done = re.search(r"done: (\d+) steps \((\d+) this run\)", resumed)
    assert int(done.group(1)) >= 1000 and int(done.group(1)) - int(done.group(2)) == saved_step
    assert _verify(job_dir / "model").returncode == 0
