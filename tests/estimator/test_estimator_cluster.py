"""Role resolution: every source, and the errors a user gets for bad input."""
import json
import socket

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


@pytest.mark.parametrize("rank, expected", [(0, ("chief", 0)), (1, ("worker", 0)), (2, ("worker", 1)),
                                            (3, ("ps", 0))])
def test_slurm_puts_the_chief_first_and_the_ps_on_the_last_node(clean_cluster_env, rank, expected):
    _slurm(clean_cluster_env, rank)
    role = cluster.resolve()
    base = 20000 + 16 * (4242 % 2000)
    assert (role.task_type, role.task_id, role.source) == (*expected, "slurm")
    assert role.cluster_spec == {"chief": [f"nid001:{base}"], "worker": [f"nid001:{base + 1}", f"nid002:{base}"],
                                 "ps": [f"nid002:{base + 1}"]}


@pytest.mark.parametrize("hosts, num_ps, ps_hosts", [
    (["a", "a", "b", "b", "c", "c"], 2, ["b", "c"]),         # One per node, from the last node back.
    (["a", "a", "b", "b", "c", "c"], 4, ["a", "b", "c", "c"]),  # Round robin, the chief's rank excluded.
    (["a", "b", "c"], 1, ["c"]),
    (["a", "a", "a"], 2, ["a", "a"]),                       # One node: the last ranks.
])
def test_ps_spread_over_the_nodes_away_from_the_chief(hosts, num_ps, ps_hosts):
    roles, spec = cluster.place_tasks(hosts, num_ps, 30000, "test")
    assert roles[0] == ("chief", 0)
    assert [address.split(":")[0] for address in spec["ps"]] == ps_hosts
    assert sorted(roles).count(("chief", 0)) == 1 and len(spec.get("worker", [])) == len(hosts) - num_ps - 1
    ports = [address for job in spec.values() for address in job]
    assert len(set(ports)) == len(hosts)  # Every task its own host:port.


def test_slurm_hosts_keep_slurms_numeric_order(clean_cluster_env):
    # TF's resolver sorts names as text (node10 before node9) and gives ranks the wrong addresses.
    _slurm(clean_cluster_env, 0, tasks="3", nodelist="node[9-10],login1", per_node="1(x3)")
    assert cluster.resolve(num_ps=1).cluster_spec["chief"][0].startswith("node9:")
    assert cluster.expand_hostlist("node[9-10],login1") == ["node9", "node10", "login1"]
    assert cluster.expand_hostlist("r[1-2]-n[01,03]") == ["r1-n01", "r1-n03", "r2-n01", "r2-n03"]
    assert cluster.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]


def test_port_base_override_and_the_limit_of_the_job_id_scheme(clean_cluster_env):
    _slurm(clean_cluster_env, 0)
    clean_cluster_env.setenv("BWTF_PORT_BASE", "31000")
    assert cluster.resolve().cluster_spec["chief"] == ["nid001:31000"]
    clean_cluster_env.delenv("BWTF_PORT_BASE")
    _slurm(clean_cluster_env, 0, tasks="17", nodelist="nid001", per_node="17")
    with pytest.raises(cluster.ClusterError, match="runs 17 tasks on nid001.*set BWTF_PORT_BASE"):
        cluster.resolve()
    clean_cluster_env.setenv("BWTF_PORT_BASE", "31000")
    assert len(cluster.resolve().cluster_spec["worker"]) == 15


@pytest.mark.parametrize("environ, expected", [
    ({"CUDA_VISIBLE_DEVICES": "4,5"}, {"chief:0": "4", "worker:0": "5", "worker:1": "4", "ps:0": ""}),
    ({"BWTF_GPUS_PER_NODE": "2"}, {"chief:0": "0", "worker:0": "1", "worker:1": "0", "ps:0": ""}),
    ({}, {"chief:0": None, "worker:0": None, "worker:1": None, "ps:0": ""}),
])
def test_one_gpu_per_training_task_of_a_node_and_none_for_the_ps(clean_cluster_env, environ, expected):
    given = {}
    for rank in range(4):  # nid001: chief, worker:0; nid002: worker:1, ps:0.
        _slurm(clean_cluster_env, rank)
        role = cluster.resolve()
        given[f"{role.task_type}:{role.task_id}"] = cluster.visible_devices(role, environ)
    assert given == expected


def test_more_training_tasks_than_gpus_on_a_node_is_refused(clean_cluster_env):
    _slurm(clean_cluster_env, 1)
    role = cluster.resolve()
    with pytest.raises(cluster.ClusterError, match="nid001 runs 2 training tasks but this task sees 1 GPU"):
        cluster.visible_devices(role, {"CUDA_VISIBLE_DEVICES": "0"})


def test_the_evaluator_gets_no_gpu_and_every_task_names_its_node(clean_cluster_env):
    clean_cluster_env.setenv("TF_CONFIG", json.dumps(
        {"cluster": {"chief": ["localhost:1"], "ps": ["localhost:2"]}, "task": {"type": "evaluator", "index": 0}}))
    role = cluster.resolve()
    assert cluster.visible_devices(role, {"CUDA_VISIBLE_DEVICES": "0,1"}) == ""
    line = cluster.describe_placement(role, {"SLURM_PROCID": "0", "CUDA_VISIBLE_DEVICES": ""})
    assert line == f"task evaluator:0 (rank 0) on {socket.gethostname()}, CUDA_VISIBLE_DEVICES=''"


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
    (lambda env: _slurm(env, 0, nodelist="nid[001-002"), {}, "SLURM_STEP_NODELIST has unbalanced brackets"),
    (lambda env: _slurm(env, 0, per_node="2x2"), {}, "SLURM_STEP_TASKS_PER_NODE must look like"),
    (lambda env: (_slurm(env, 0), env.setenv("BWTF_PORT_BASE", "80")), {}, "BWTF_PORT_BASE must be a port in"),
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
    assert (role.task_type, role.task_id, role.source) == ("ps", 0, "pbs")
    assert role.cluster_spec == {"chief": [f"n1:{base}"], "worker": [f"n1:{base + 1}"], "ps": [f"n2:{base}"]}


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
