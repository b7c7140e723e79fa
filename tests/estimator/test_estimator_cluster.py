"""Role resolution: every source, and the errors a user gets for bad input."""
import json

import pytest

from bwtf.estimator.cluster import roles as cluster

_PS = ["localhost:2222"]
_WORKERS = ["localhost:2223", "localhost:2224", "localhost:2225"]


@pytest.mark.parametrize("job_name, task_index, expected", [
    ("worker", 0, ("chief", 0)),
    ("worker", 2, ("worker", 1)),
    ("ps", 0, ("ps", 0)),
    ("evaluator", 0, ("evaluator", 0)),
])
def test_classic_flags_make_worker_zero_the_chief(clean_cluster_env, job_name, task_index, expected):
    role = cluster.resolve(job_name=job_name, task_index=task_index, ps_hosts=_PS, worker_hosts=_WORKERS)
    assert (role.task_type, role.task_id) == expected
    assert role.cluster_spec == {"ps": _PS, "chief": _WORKERS[:1], "worker": _WORKERS[1:]}
    assert role.source == "flags"
    assert role.num_workers == 3 and role.num_ps == 1


def test_tf_config_json_round_trips_to_what_the_estimator_reads(clean_cluster_env):
    role = cluster.resolve(job_name="worker", task_index=1, ps_hosts=_PS, worker_hosts=_WORKERS)
    config = json.loads(role.tf_config_json())
    assert config["task"] == {"type": "worker", "index": 0}
    assert config["cluster"]["chief"] == ["localhost:2223"]
    assert role.input_pipeline_id == 1 and role.address == "localhost:2224"


@pytest.mark.parametrize("kwargs, message", [
    (dict(job_name="worker", worker_hosts=_WORKERS), "needs --task_index"),
    (dict(job_name="worker", task_index=3, worker_hosts=_WORKERS), "out of range"),
    (dict(job_name="ps", task_index=0, worker_hosts=_WORKERS), "out of range"),
    (dict(job_name="ps", task_index=0, ps_hosts=_PS), "needs --worker_hosts"),
    (dict(job_name="boss", task_index=0, worker_hosts=_WORKERS), "--job_name must be one of"),
    (dict(job_name="worker", task_index=0, worker_hosts=["localhost"]), "expected 'host:port'"),
    (dict(job_name="worker", task_index=0, worker_hosts=["localhost:99999"]), "expected 'host:port'"),
    (dict(job_name="worker", task_index=0, ps_hosts=["h:1"], worker_hosts=["h:1"]), "appears twice"),
    (dict(job_name="evaluator", task_index=1, worker_hosts=_WORKERS), "one evaluator"),
    (dict(task_index=0), "--task_index needs --job_name"),
    (dict(source="slurm", job_name="worker", task_index=0, worker_hosts=_WORKERS), "contradicts"),
    (dict(source="cloud"), "--cluster must be one of"),
])
def test_inconsistent_flags_are_rejected(clean_cluster_env, kwargs, message):
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.resolve(**kwargs)


def test_tf_config_with_a_chief(clean_cluster_env):
    spec = {"chief": ["h0:1000"], "worker": ["h1:1000"], "ps": ["h2:1000", "h3:1000"]}
    clean_cluster_env.setenv("TF_CONFIG", json.dumps({"cluster": spec, "task": {"type": "ps", "index": 1}}))
    role = cluster.resolve()
    assert (role.task_type, role.task_id, role.source) == ("ps", 1, "tf_config")
    assert role.cluster_spec == spec and role.num_workers == 2


def test_tf_config_without_a_chief_promotes_worker_zero(clean_cluster_env):
    spec = {"worker": ["h0:1000", "h1:1000"]}
    clean_cluster_env.setenv("TF_CONFIG", json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}}))
    role = cluster.resolve(source="tf_config")
    assert (role.task_type, role.task_id) == ("chief", 0)
    assert role.cluster_spec == {"chief": ["h0:1000"], "worker": ["h1:1000"]}


def test_flags_win_over_tf_config(clean_cluster_env):
    clean_cluster_env.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["h0:1"]}, "task": {"type": "chief", "index": 0}}))
    role = cluster.resolve(job_name="ps", task_index=0, ps_hosts=_PS, worker_hosts=_WORKERS)
    assert (role.source, role.task_type) == ("flags", "ps")


@pytest.mark.parametrize("tf_config, message", [
    ("{not json", "not valid JSON"),
    ('["chief"]', "must be"),
    ('{"cluster": {"chief": ["h:1"]}}', "must be"),
    ('{"cluster": {"chief": ["h:1"]}, "task": {"type": "boss", "index": 0}}', "task type must be"),
    ('{"cluster": {"chief": ["h:1"]}, "task": {"type": "chief", "index": -1}}', "non-negative"),
    ('{"cluster": {"chief": ["h:1"]}, "task": {"type": "chief", "index": "0"}}', "non-negative"),
    ('{"cluster": {"chief": ["h:1"]}, "task": {"type": "worker", "index": 0}}', "not in its cluster"),
    ('{"cluster": {"chief": ["h:1"], "master": ["h:2"]}, "task": {"type": "chief"}}', "unknown job"),
    ('{"cluster": {"chief": "h:1"}, "task": {"type": "chief"}}', "list of 'host:port'"),
    ('{"cluster": {"chief": ["h:1", "h:2"]}, "task": {"type": "chief"}}', "more than one chief"),
])
def test_malformed_tf_config_is_rejected(clean_cluster_env, tf_config, message):
    clean_cluster_env.setenv("TF_CONFIG", tf_config)
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.resolve()


def test_forced_tf_config_without_the_variable(clean_cluster_env):
    with pytest.raises(cluster.ClusterError, match="TF_CONFIG environment variable is empty"):
        cluster.resolve(source="tf_config")


def _slurm(env, rank, tasks="4", nodelist="nid[001-002]", per_node="2(x2)", job_id="4242"):
    env.setenv("SLURM_JOB_ID", job_id)
    env.setenv("SLURM_PROCID", str(rank))
    env.setenv("SLURM_STEP_NUM_TASKS", tasks)
    env.setenv("SLURM_STEP_NODELIST", nodelist)
    env.setenv("SLURM_STEP_TASKS_PER_NODE", per_node)


@pytest.mark.parametrize("rank, expected", [(0, ("ps", 0)), (1, ("chief", 0)), (3, ("worker", 1))])
def test_slurm_mixes_ps_and_workers_on_nodes(clean_cluster_env, rank, expected):
    _slurm(clean_cluster_env, rank)
    role = cluster.resolve()
    base = 20000 + 16 * (4242 % 2000)
    assert (role.task_type, role.task_id, role.source) == (*expected, "slurm")
    assert role.cluster_spec == {"ps": [f"nid001:{base}"], "chief": [f"nid001:{base + 1}"],
                                 "worker": [f"nid002:{base}", f"nid002:{base + 1}"]}


def test_two_slurm_jobs_on_one_node_get_different_ports(clean_cluster_env):
    _slurm(clean_cluster_env, 0, job_id="100")
    first = set(cluster.resolve().cluster_spec["ps"])
    _slurm(clean_cluster_env, 0, job_id="101")
    assert not first & set(cluster.resolve().cluster_spec["ps"])


def test_slurm_collective_has_no_ps(clean_cluster_env):
    _slurm(clean_cluster_env, 0)
    role = cluster.resolve(num_ps=0)
    assert (role.task_type, role.num_ps, role.num_workers) == ("chief", 0, 4)


def test_single_slurm_task_trains_locally(clean_cluster_env):
    _slurm(clean_cluster_env, 0, tasks="1", nodelist="nid001", per_node="1")
    role = cluster.resolve()
    assert (role.is_distributed, role.source, role.tf_config_json()) == (False, "slurm", "")


@pytest.mark.parametrize("setup, kwargs, message", [
    (lambda env: None, dict(source="slurm"), "SLURM_JOB_ID, SLURM_PROCID"),
    (lambda env: _slurm(env, 0, tasks="2", per_node="1(x2)"), dict(num_ps=2), "at least one task must be a worker"),
    (lambda env: _slurm(env, 0, tasks="two"), {}, "SLURM_STEP_NUM_TASKS must be a non-negative integer"),
    (lambda env: _slurm(env, 0, job_id="abc"), {}, "SLURM_JOB_ID must start with the numeric job id"),
    (lambda env: _slurm(env, 0, per_node="3(x2)"), {}, "cannot lay out the Slurm step"),
])
def test_bad_slurm_environment(clean_cluster_env, setup, kwargs, message):
    setup(clean_cluster_env)
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.resolve(**kwargs)


def _pbs(env, tmp_path, lines, rank_variable="PMI_RANK", rank=0, size=None, job_id="777.pbs01"):
    node_file = tmp_path / "nodes"
    node_file.write_text("".join(f"{line}\n" for line in lines))
    env.setenv("PBS_NODEFILE", str(node_file))
    env.setenv("PBS_JOBID", job_id)
    env.setenv(rank_variable, str(rank))
    if size is not None:
        env.setenv("PMI_SIZE", str(size))


@pytest.mark.parametrize("rank_variable", ["PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "ALPS_APP_PE"])
def test_pbs_rank_from_each_launcher(clean_cluster_env, tmp_path, rank_variable):
    _pbs(clean_cluster_env, tmp_path, ["n1", "n1", "n2"], rank_variable=rank_variable, rank=2)
    role = cluster.resolve()
    base = 20000 + 16 * 777
    assert (role.task_type, role.task_id, role.source) == ("worker", 0, "pbs")
    assert role.cluster_spec == {"ps": [f"n1:{base}"], "chief": [f"n1:{base + 1}"], "worker": [f"n2:{base}"]}


@pytest.mark.parametrize("lines, kwargs, message", [
    (["n1", "n2"], dict(rank=2), "expected rank < tasks <= slots"),
    (["n1"], dict(size=3), "expected rank < tasks <= slots"),
    (["n1", "n2"], dict(job_id="x.pbs"), "PBS_JOBID must start with the numeric job id"),
])
def test_bad_pbs_environment(clean_cluster_env, tmp_path, lines, kwargs, message):
    _pbs(clean_cluster_env, tmp_path, lines, **kwargs)
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.resolve()


def test_forced_pbs_without_variables(clean_cluster_env):
    with pytest.raises(cluster.ClusterError, match="PBS_NODEFILE or a rank variable"):
        cluster.resolve(source="pbs")


def test_unreadable_node_file(clean_cluster_env, tmp_path):
    clean_cluster_env.setenv("PBS_NODEFILE", str(tmp_path / "absent"))
    clean_cluster_env.setenv("PMI_RANK", "0")
    with pytest.raises(cluster.ClusterError, match="cannot read PBS_NODEFILE"):
        cluster.resolve()


def test_local_when_nothing_is_set(clean_cluster_env):
    role = cluster.resolve()
    assert (role.task_type, role.source, role.is_distributed, role.checkpoint_device) == ("chief", "local", False, None)
    assert "single process" in role.describe()
