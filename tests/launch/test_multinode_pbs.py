"""scripts/train.pbs across three virtual nodes, under Open MPI's mpiexec.

Debian has no PBS server, so the test plays its part: a PBS_NODEFILE naming the
virtual nodes (node1 three times: the evaluator, the chief and a worker; node2
one worker; node3, which does not see the shared "Lustre" directory, the ps),
the PBS variables, and the script run on node1 as PBS's mother superior would.
mpiexec reaches node2 and node3 through the cluster's rsh agent, which enters
the node's namespaces where ssh would log in. The assertions are those of the
first multi-node Slurm test: roles, nodes, ports and GPUs as placed, a
complete checkpoint on the shared directory, nothing on node3's disk, and a
single-process restore with the chief's precision@1.
"""
import json
import re
import subprocess
import sys

import pytest

from launch_helpers import REPO_ROOT, install_mpiexec_reason

pytestmark = [pytest.mark.slow]

_SCRIPT = REPO_ROOT / "scripts" / "train.pbs"


def _placement(log):
    found = re.search(r"task (\w+:\d+) \(rank (\d+)\) on (\S+), CUDA_VISIBLE_DEVICES='([^']*)'", log)
    assert found, f"no placement line in the task log:\n{log[:2000]}"
    role, rank, node, gpus = found.groups()
    return rank, role, node, gpus


@pytest.mark.timeout(420)
def test_pbs_job_across_nodes_with_the_ps_on_a_node_without_the_shared_dir(
        virtual_cluster, digits_data_dir, tmp_path):
    reason = install_mpiexec_reason()
    if reason:
        pytest.skip(reason)
    cluster = virtual_cluster
    work = tmp_path / "pbs-job"
    work.mkdir()
    model_dir = cluster.lustre / "pbs-model"
    flagfile = work / "job.flags"
    flagfile.write_text("\n".join([
        "--model=small_cnn", "--image_size=32", f"--data_dir={digits_data_dir}",
        "--dataset=imagenet_archive/present", f"--model_dir={model_dir}", "--train_steps=200",
        "--batch_size=32", "--save_checkpoints_steps=50", "--log_every_steps=10", "--eval_throttle_secs=5",
        "--num_ps=1"]) + "\n")
    node_file = work / "nodefile"
    node_file.write_text("node1\nnode1\nnode2\nnode3\nnode1\n")  # Grouped by the script.
    env = dict(cluster.env, PBS_JOBID="5151.pbs-server", PBS_NODEFILE=str(node_file), PBS_O_WORKDIR=str(work),
               PBS_JOBNAME="bwtf-train", PBS_ENVIRONMENT="PBS_BATCH", PBS_WALLTIME="3600",
               BWTF_GPUS_PER_NODE="2", OMPI_MCA_plm_rsh_agent=str(cluster.rsh_agent))
    for name in ("BWTF_WALLTIME_END", "SLURM_JOB_ID", "SLURM_STEP_NUM_TASKS", "SLURM_CONF"):
        env.pop(name, None)
    result = cluster.run("node1", ["bash", str(_SCRIPT), f"--flagfile={flagfile}"], env=env, timeout=360)
    assert result.returncode == 0, result.stdout + result.stderr

    run_dir = work / "bwtf-logs-5151" / "r0"
    logs = [p.read_text(errors="replace") for p in run_dir.glob("train-*.log")]
    placement = {int(rank): (role, node, gpus) for rank, role, node, gpus in map(_placement, logs)}
    assert placement == {0: ("chief:0", "node1", "0"), 1: ("worker:0", "node1", "1"),
                         2: ("worker:1", "node2", "0"), 3: ("ps:0", "node3", "")}
    evaluator = (run_dir / "evaluator.log").read_text(errors="replace")
    assert _placement(evaluator)[1:] == ("evaluator:0", "node1", "")
    port = 20000 + 16 * (5151 % 2000)
    chief = next(log for log in logs if "task chief:0 (rank 0)" in log)
    assert f"chief=node1:{port} ps=node3:{port} worker=node1:{port + 1},node2:{port}" in chief

    shared = cluster.shared / "pbs-model"
    verified = subprocess.run([sys.executable, "-m", "bwtf.ckpt", "verify", str(shared)],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert not (cluster.local("node3") / "pbs-model").exists() or \
        list((cluster.local("node3") / "pbs-model").iterdir()) == []
    final = float(re.search(r"final precision@1 (0\.\d+)", chief).group(1))
    result_json = tmp_path / "eval.json"
    evaluated = subprocess.run(
        [sys.executable, "-m", "bwtf.estimator.evaluate", "--model=small_cnn", "--image_size=32",
         f"--data_dir={digits_data_dir}", "--dataset=imagenet_archive/present", f"--model_dir={shared}",
         "--split=validation", f"--output_json={result_json}"],
        capture_output=True, text=True, timeout=300, env=cluster.env)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(result_json.read_text())["precision_at_1"] == pytest.approx(final, abs=1e-4)
