"""scripts/train.sbatch across three virtual nodes (virtual_cluster.sh), with Slurm on them.

node1 and node2 share the "Lustre" directory; node3 sees a node-local one at
the same path, as a Blue Waters compute node saw its own disk. The training
step places rank 0 (the chief) on node1 and the ps on the last rank of the last
node, node3, so the ps runs where ``--model_dir`` is not the shared directory:
bwtf's chief gathers every variable and writes the checkpoint itself, so the
ps writes nothing; TF's stock sharded saver (the contrasting test) leaves the
ps's shard on node3's disk and a checkpoint that cannot be restored. Further
tests stop the job with ``scancel --signal=TERM`` and kill every process of a
node mid-run. Each job trains small_cnn at 32 px on the digits archive.
"""
import json
import re
import subprocess
import sys
import time

import pytest

from launch_helpers import LAUNCH_TESTS_DIR, REPO_ROOT, slurm_job_state, wait_for_job_state

pytestmark = [pytest.mark.slow]

_SBATCH = REPO_ROOT / "scripts" / "train.sbatch"
_ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}


def _flags(cluster, job_dir, data_dir, train_steps, save_steps):
    return [
        "--model=small_cnn", "--image_size=32", f"--data_dir={data_dir}", "--dataset=imagenet_archive/present",
        f"--model_dir={cluster.lustre / job_dir.name}", f"--train_steps={train_steps}", "--batch_size=32",
        f"--save_checkpoints_steps={save_steps}", "--log_every_steps=10", "--eval_throttle_secs=5",
        "--num_ps=1"]


def _submit(cluster, job_dir, data_dir, train_steps, save_steps, sbatch_args=(), env=None):
    job_dir.mkdir()
    flagfile = job_dir / "job.flags"
    flagfile.write_text("\n".join(_flags(cluster, job_dir, data_dir, train_steps, save_steps)) + "\n")
    result = subprocess.run(
        ["sbatch", "--parsable", "--nodes=3", "--cpus-per-task=1", *sbatch_args, str(_SBATCH),
         f"--flagfile={flagfile}"], cwd=job_dir, env=env or cluster.env, capture_output=True, text=True,
        timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _task_logs(job_dir, job_id, restart):
    """{rank: log text} of the training step of one run."""
    logs = {}
    for log in (job_dir / f"bwtf-logs-{job_id}").glob(f"train-r{restart}-*.log"):
        logs[int(log.stem.rsplit("-", 1)[1])] = log.read_text(errors="replace")
    return logs


def _chief_log(job_dir, job_id, restart):
    return _task_logs(job_dir, job_id, restart)[0]


def _wrapper_line(log):
    """What a task logs about itself: (rank, role, node, CUDA_VISIBLE_DEVICES)."""
    found = re.search(r"task (\w+:\d+) \(rank (\d+)\) on (\S+), CUDA_VISIBLE_DEVICES='([^']*)'", log)
    assert found, f"no placement line in the task log:\n{log[:2000]}"
    role, rank, node, gpus = found.groups()
    return rank, role, node, gpus


def _chief_steps(log):
    return [int(s) for s in re.findall(r"(?:\]|\d\d:\d\d:\d\d) step (\d+)/", log)]


def _saved_steps(log):
    return [int(s) for s in re.findall(r"Saved checkpoint \S*/ckpt-(\d+)/", log)]


def _verify(model_dir):
    return subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(model_dir)],
                          capture_output=True, text=True, timeout=120)


def _wait_for_chief_step(job_dir, job_id, at_least, timeout_secs, env):
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        logs = _task_logs(job_dir, job_id, 0)
        if 0 in logs and _chief_steps(logs[0]) and _chief_steps(logs[0])[-1] >= at_least \
                and _saved_steps(logs[0]):
            return _chief_steps(logs[0])[-1]
        state, _ = slurm_job_state(job_id, env)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job_id} is {state} already"
        time.sleep(0.5)
    raise AssertionError(f"the chief of job {job_id} did not reach step {at_least} in {timeout_secs}s")


def _release_when_pending(job_id, env):
    # Slurm holds a requeued job for about two minutes; the tests release it at once.
    def release():
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env,
                       capture_output=True, timeout=30)
    return release


@pytest.mark.timeout(420)
def test_ps_on_a_node_without_the_shared_dir_still_gives_a_usable_checkpoint(
        virtual_slurm, digits_data_dir, tmp_path):
    cluster = virtual_slurm
    job_dir = tmp_path / "shared-ckpt"
    # 5 tasks on 3 nodes in blocks: node1 runs ranks 0-1, node2 rank 2, node3
    # rank 3; the evaluator is the 5th task, in its own step on node1. Each node
    # declares two stand-in GPUs.
    job_id = _submit(cluster, job_dir, digits_data_dir, train_steps=200, save_steps=50,
                     sbatch_args=["--ntasks=5", "--gres=gpu:2"])
    state, _ = wait_for_job_state(job_id, cluster.env, _ENDED, 360)
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "COMPLETED", batch_log

    # Roles, nodes, ports and devices, as each task's log states them.
    logs = _task_logs(job_dir, job_id, 0)
    placement = {int(rank): (role, node, gpus) for rank, role, node, gpus in map(_wrapper_line, logs.values())}
    assert placement == {0: ("chief:0", "node1", "0"), 1: ("worker:0", "node1", "1"),
                         2: ("worker:1", "node2", "0"), 3: ("ps:0", "node3", "")}
    evaluator = (job_dir / f"bwtf-logs-{job_id}" / "evaluator-r0.log").read_text(errors="replace")
    assert _wrapper_line(evaluator)[1:] == ("evaluator:0", "node1", "")
    port = 20000 + 16 * (int(job_id) % 2000)
    assert (f"chief=node1:{port} ps=node3:{port} worker=node1:{port + 1},node2:{port}"
            in logs[0]), logs[0][:3000]
    assert "this ps exits with 0" in logs[3]

    # The checkpoint is complete on the shared directory, the ps's node-local one is empty.
    model_dir = cluster.shared / job_dir.name
    verified = _verify(model_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert list(cluster.local("node3").iterdir()) == []

    # It restores into one process (here, outside the cluster) with the chief's precision@1.
    final = float(re.search(r"final precision@1 (0\.\d+)", logs[0]).group(1))
    result_json = tmp_path / "eval.json"
    evaluated = subprocess.run(
        [sys.executable, "-m", "bwtf.estimator.evaluate", "--model=small_cnn", "--image_size=32",
         f"--data_dir={digits_data_dir}", "--dataset=imagenet_archive/present", f"--model_dir={model_dir}",
         "--split=validation", f"--output_json={result_json}"],
        capture_output=True, text=True, timeout=300, env=cluster.env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(result_json.read_text())["precision_at_1"] == pytest.approx(final, abs=1e-4)


@pytest.mark.timeout(240)
def test_stock_sharded_saver_with_the_ps_on_a_node_local_disk_leaves_an_unusable_checkpoint(
        virtual_slurm, tmp_path):
    cluster = virtual_slurm
    program = LAUNCH_TESTS_DIR / "stock_saver_task.py"
    name = tmp_path.name
    # The path exists on node3's own disk too (an earlier job made it): TF's
    # save then "succeeds" there, as it did on Blue Waters.
    (cluster.local("node3") / name / "stock").mkdir(parents=True)
    result = subprocess.run(
        ["srun", "--nodes=2", "--nodelist=node1,node3", "--ntasks=2", "--distribution=block",
         "--kill-on-bad-exit=1", "--label", sys.executable, str(program), str(cluster.lustre / name)],
        env=cluster.env, capture_output=True, text=True, timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stock: 7 steps, weights sum 70.0" in result.stdout
    # The chief wrote TF's pointer and the graph to the shared directory; the ps
    # wrote the checkpoint itself (SaveV2 and the merge run on the ps) to node3's disk.
    stock = cluster.shared / name / "stock"
    assert sorted(p.name for p in stock.iterdir()) == ["checkpoint", "model.ckpt-7.meta"]
    on_node3 = sorted(p.name for p in (cluster.local("node3") / name / "stock").iterdir())
    assert on_node3 == ["model.ckpt-7.data-00000-of-00001", "model.ckpt-7.index"]
    restored = subprocess.run(
        [sys.executable, "-c", "import sys, tensorflow as tf; tf.train.load_checkpoint(tf.train.latest_checkpoint("
         "sys.argv[1]))", str(stock)], capture_output=True, text=True, timeout=120)
    assert restored.returncode != 0, restored.stdout
    # The same variables saved by bwtf from the same cluster: committed on the shared directory.
    gathered = cluster.shared / name / "gathered"
    assert _verify(gathered).returncode == 0
    reread = subprocess.run(
        [sys.executable, "-c", "import sys, tensorflow as tf; print(tf.train.load_checkpoint(sys.argv[1])"
         ".get_tensor('weights').sum())", str(gathered / "ckpt-7" / "model.ckpt-7")],
        capture_output=True, text=True, timeout=120)
    assert reread.returncode == 0 and reread.stdout.strip() == "70.0", reread.stderr[-2000:]


@pytest.mark.timeout(480)
def test_scancel_term_across_nodes_saves_requeues_and_loses_no_step(virtual_slurm, digits_data_dir, tmp_path):
    cluster = virtual_slurm
    job_dir = tmp_path / "sigterm"
    # Far more steps than the ~100 this test waits for, so that the TERM lands mid-training.
    job_id = _submit(cluster, job_dir, digits_data_dir, train_steps=1000, save_steps=1000,
                     sbatch_args=["--ntasks=4"])
    _wait_for_chief_step_without_save(job_dir, job_id, 100, 240, cluster.env)
    subprocess.run(["scancel", "--signal=TERM", job_id], env=cluster.env, check=True, timeout=30)
    wait_for_job_state(job_id, cluster.env, {"PENDING", "RUNNING"}, 90)
    state, restarts = wait_for_job_state(job_id, cluster.env, _ENDED, 360,
                                         on_pending=_release_when_pending(job_id, cluster.env))
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "COMPLETED" and restarts == 1, batch_log
    assert "the chief saved and stopped for requeue" in batch_log
    first = _chief_log(job_dir, job_id, 0)
    assert re.search(r"Stopping at step \d+ after a final save: SIGTERM", first), first[-3000:]
    saved_step = _saved_steps(first)[-1]
    assert saved_step < 900
    resumed = _chief_log(job_dir, job_id, 1)
    assert f"resuming from {cluster.lustre / job_dir.name}/ckpt-{saved_step}/" in resumed
    done = re.search(r"done: (\d+) steps \((\d+) this run\)", resumed)
    assert int(done.group(1)) >= 1000 and int(done.group(1)) - int(done.group(2)) == saved_step
    assert _verify(cluster.shared / job_dir.name).returncode == 0


def _wait_for_chief_step_without_save(job_dir, job_id, at_least, timeout_secs, env):
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        logs = _task_logs(job_dir, job_id, 0)
        if 0 in logs and _chief_steps(logs[0]) and _chief_steps(logs[0])[-1] >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"the chief of job {job_id} did not reach step {at_least} in {timeout_secs}s")


@pytest.mark.timeout(540)
@pytest.mark.parametrize("victim", ["node2", "node3"], ids=["worker_node", "ps_node"])
def test_a_failed_node_requeues_the_job_which_resumes_from_the_newest_intact_checkpoint(
        virtual_slurm, digits_data_dir, tmp_path, victim):
    cluster = virtual_slurm
    job_dir = tmp_path / f"nodefail-{victim}"
    save_steps = 100
    # 3 training tasks, one per node: chief node1, worker node2, ps node3.
    job_id = _submit(cluster, job_dir, digits_data_dir, train_steps=600, save_steps=save_steps,
                     sbatch_args=["--ntasks=4"])
    _wait_for_chief_step(job_dir, job_id, 150, 240, cluster.env)
    cluster.kill_node(victim)
    killed_at = time.monotonic()
    # What a node health check does once the node stops answering: Slurm then
    # ends the job's run on every node and requeues it (--requeue).
    subprocess.run(["scontrol", "update", f"NodeName={victim}", "State=DOWN", "Reason=killed by test"],
                   env=cluster.env, check=True, timeout=30)
    time.sleep(2)
    last_step = _chief_steps(_chief_log(job_dir, job_id, 0))[-1]
    cluster.restart_slurmd(victim)
    subprocess.run(["scontrol", "update", f"NodeName={victim}", "State=RESUME"], env=cluster.env,
                   capture_output=True, timeout=30)
    state, restarts = wait_for_job_state(job_id, cluster.env, _ENDED, 420,
                                         on_pending=_release_when_pending(job_id, cluster.env))
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "COMPLETED" and restarts >= 1, batch_log
    newest_saved = max(_saved_steps(_chief_log(job_dir, job_id, 0)))
    resumed = _chief_log(job_dir, job_id, 1)
    resumed_from = int(re.search(r"resuming from \S+/ckpt-(\d+)/", resumed).group(1))
    assert resumed_from >= newest_saved  # The newest intact checkpoint of the failed run.
    assert last_step - resumed_from <= save_steps + 20  # At most one save interval (plus async slack).
    done = re.search(r"done: (\d+) steps", resumed)
    assert int(done.group(1)) >= 600
    assert _verify(cluster.shared / job_dir.name).returncode == 0
    print(f"{victim}: killed at step {last_step}, resumed from {resumed_from}, "
          f"job completed {time.monotonic() - killed_at:.0f}s after the kill")


@pytest.mark.timeout(300)
def test_a_chief_failing_at_startup_ends_every_task_of_the_job_within_seconds(
        virtual_slurm, digits_data_dir, tmp_path):
    cluster = virtual_slurm
    job_dir = tmp_path / "bad-data-dir"
    env = dict(cluster.env)
    started = time.monotonic()
    job_id = _submit(cluster, job_dir, "/nonexistent/tfds", train_steps=200, save_steps=50,
                     sbatch_args=["--ntasks=4"], env=env)
    # Bounded far below the 900 s a ps used to wait for a chief that never came.
    state, _ = wait_for_job_state(job_id, cluster.env, _ENDED, 200)
    elapsed = time.monotonic() - started
    batch_log = (job_dir / f"bwtf-train-{job_id}.out").read_text()
    assert state == "FAILED", batch_log
    assert "training step ended with status 2" in batch_log
    status_dir = job_dir / f"bwtf-logs-{job_id}" / "status-r0"
    statuses = {p.name: p.read_text().strip() for p in status_dir.glob("task-*.status")}
    assert statuses["task-0.status"] == "2" and statuses["task-2.status"] == "70", statuses
    assert statuses["task-1.status"] in ("2", "70"), statuses  # The worker fails the same way, or is stopped.
    ps_log = _task_logs(job_dir, job_id, 0)[2]
    assert "the chief (rank 0) failed with status 2; stopping this task" in ps_log, ps_log[-2000:]
    evaluator_status = (status_dir / "evaluator" / "task-0.status")
    assert not evaluator_status.exists() or evaluator_status.read_text().strip() in ("2", "70")
    print(f"the job with a failing chief ended {elapsed:.0f}s after submission")
