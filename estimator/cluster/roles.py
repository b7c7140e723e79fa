"""This process's role in the training cluster, and the cluster itself.

    resolve(source="auto", job_name=None, task_index=None, ps_hosts=(),
            worker_hosts=(), num_ps=1) -> ClusterRole   (reads os.environ)
    visible_devices(role, environ) -> str | None   this task's CUDA_VISIBLE_DEVICES
    log_role(role, environ)                        the one line "cluster role worker:0 (from slurm); ..."
    under_scheduler(role, environ) -> bool         placed by Slurm or PBS (placement matters)
    describe_placement(role, environ) -> str       "task ps:0 (rank 3) on node3, CUDA_VISIBLE_DEVICES=''"
    place_tasks(hosts, num_ps, base_port, where), expand_hostlist(text), expand_tasks_per_node(text)
    ClusterRole(task_type, task_id, cluster_spec, source)
        .tf_config_json()   the TF_CONFIG the Estimator reads ("" when local)
        .is_chief, .is_distributed, .num_workers, .num_ps, .input_pipeline_id,
        .checkpoint_device, .address, .describe()

Sources, first match wins with ``source="auto"`` (or forced by name):

1. ``flags``: ``--job_name=ps|worker|evaluator --task_index --ps_hosts --worker_hosts``,
   the classic TF 1.x command line. Worker 0 becomes the ``chief``, worker i
   becomes ``worker`` i-1, so every process derives the same spec.
2. ``tf_config``: the ``TF_CONFIG`` environment variable, checked strictly
   (TF's ``TFConfigClusterResolver`` accepts malformed values silently and
   would fail later, deep in the Estimator). A cluster without a ``chief``
   job gets worker 0 promoted the same way.
3. ``slurm``: inside an ``srun`` step (``SLURM_STEP_NUM_TASKS`` set). The
   step's hosts come from ``SLURM_STEP_NODELIST`` and
   ``SLURM_STEP_TASKS_PER_NODE`` in Slurm's order, ranks in blocks (the batch
   script asks for ``--distribution=block``); roles are placed as below.
4. ``pbs``: ``PBS_NODEFILE`` plus the rank from ``PMI_RANK``, ``PALS_RANKID``,
   ``OMPI_COMM_WORLD_RANK`` or ``ALPS_APP_PE`` (first set wins) and the size
   from ``PMI_SIZE``, ``PALS_SIZE``, ``OMPI_COMM_WORLD_SIZE`` (else one task per
   node-file line). Rank r runs on line r+1 of the node file; roles are placed
   as below, ports from ``PBS_JOBID``.
5. ``local``: one process, no cluster.

Placement under Slurm and PBS (``place_tasks``): rank 0, on the first node, is
the chief; the ``num_ps`` ps tasks take the last rank of the last node, of the
node before it, and so on (round robin), so they spread over the nodes and
stay off the chief's node while there are others; the remaining ranks are the
workers, in rank order. (TF's ``SlurmClusterResolver`` puts the ps on the
first ranks, the chief's node, and sorts host names as text, so node10 comes
before node2.) A task's port is the job's first port plus its index among the
job's tasks on its host; the first port is ``BWTF_PORT_BASE`` when set, else
20000 + 16 * (job id mod 2000), so that two jobs sharing a node do not collide
unless their ids differ by a multiple of 2000 (a task then refuses to start
on its taken port, naming it) or one of them runs more than 16 tasks on a node
(refused: set ``BWTF_PORT_BASE``).

GPUs (``visible_devices``): a task of a scheduler's job that sees its node's
GPUs in ``CUDA_VISIBLE_DEVICES`` (or ``BWTF_GPUS_PER_NODE=N``) keeps the i-th of
them if it is the i-th training task (chief or worker) on its node, and none if
it is a ps or the evaluator. ``bwtf-train`` applies this before TensorFlow
touches a GPU and logs it with the task's node (``describe_placement``).

A single-task Slurm step or PBS job resolves to ``local`` training, with its
source still named. ``num_ps=0`` (collective training) makes every task a
worker. The evaluator is not part of the training cluster; it comes only from
flags or TF_CONFIG.

Deliberately left out: starting servers (``train`` and ``ps_lifecycle`` do
that) and any network probing.
"""
import dataclasses
import os
import re
import socket
from typing import Dict, List

from absl import logging

import bwtf
from bwtf.estimator.cluster import tf_config

SOURCES = ("auto", "flags", "tf_config", "slurm", "pbs", "local")
_TASK_TYPES = ("chief", "worker", "ps", "evaluator")
_CLASSIC_JOBS = ("ps", "worker", "evaluator")
_PORT_FLOOR = 20000
_PORTS_PER_JOB = 16
_PORT_SLOTS = 2000
# The MPI launchers' rank variables, first set wins (SLURM_PROCID is Slurm's own).
MPI_RANK_VARIABLES = ("PMI_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK", "ALPS_APP_PE")
# A batch task's rank under any scheduler: Slurm's first, then the MPI launchers'.
SCHEDULER_RANK_VARIABLES = ("SLURM_PROCID",) + MPI_RANK_VARIABLES
_SIZE_VARIABLES = ("PMI_SIZE", "PALS_SIZE", "OMPI_COMM_WORLD_SIZE")
_PORT_BASE_VARIABLE = "BWTF_PORT_BASE"
_GPUS_PER_NODE_VARIABLE = "BWTF_GPUS_PER_NODE"
_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS",
                    "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
_ADDRESS = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:(\d{1,5})$")


class ClusterError(bwtf.UserError, ValueError):
    """The cluster description is malformed or inconsistent; says which part."""


@dataclasses.dataclass(frozen=True)
class ClusterRole:
    """This process's task in ``cluster_spec`` ({job: ["host:port", ...]})."""

    task_type: str
    task_id: int
    cluster_spec: Dict[str, List[str]]
    source: str

    @property
    def is_distributed(self):
        return bool(self.cluster_spec)

    @property
    def is_chief(self):
        return self.task_type == "chief"

    @property
    def num_workers(self):
        """Tasks that train: the chief plus the workers (1 when local)."""
        if not self.is_distributed:
            return 1
        return len(self.cluster_spec.get("chief", [])) + len(self.cluster_spec.get("worker", []))

    @property
    def num_ps(self):
        return len(self.cluster_spec.get("ps", []))

    @property
    def input_pipeline_id(self):
        """The chief reads input shard 0, worker i reads shard i + 1."""
        return self.task_id + 1 if self.task_type == "worker" else 0

    @property
    def address(self):
        if self.task_type in self.cluster_spec:
            return self.cluster_spec[self.task_type][self.task_id]
        return None

    @property
    def checkpoint_device(self):
        """Where the gathered saver runs: the chief's CPU (None when local)."""
        return "/job:chief/task:0/device:CPU:0" if self.is_distributed else None

    def tf_config_json(self):
        if not self.is_distributed:
            return ""
        return tf_config.build(self.cluster_spec, self.task_type, self.task_id)

    def describe(self):
        jobs = " ".join(f"{job}={','.join(hosts)}" for job, hosts in sorted(self.cluster_spec.items()))
        return (f"cluster role {self.task_type}:{self.task_id} (from {self.source}); "
                f"{self.num_workers} training task(s), {self.num_ps} ps; {jobs or 'single process'}")


def _check_address(address, where):
    match = _ADDRESS.match(address)
    if not match or not 0 < int(match.group(1)) < 65536:
        raise ClusterError(f"{where}: expected 'host:port' with a port in 1-65535, found {address!r}")


def _check_spec(spec, where):
    seen = set()
    for job, hosts in spec.items():
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise ClusterError(f"{where}: job {job!r} must be a list of 'host:port' strings, found {hosts!r}")
        for host in hosts:
            _check_address(host, f"{where}, job {job!r}")
            if host in seen:
                raise ClusterError(f"{where}: address {host} appears twice; every task needs its own port")
            seen.add(host)


def _promote_worker_zero(spec, task_type, task_id):
    """Worker 0 becomes the chief when the spec has none (same rule in every process)."""
    if spec.get("chief") or not spec.get("worker"):
        return spec, task_type, task_id
    spec = dict(spec)
    workers = list(spec.pop("worker"))
    spec["chief"] = workers[:1]
    if workers[1:]:
        spec["worker"] = workers[1:]
    if task_type == "worker":
        task_type, task_id = ("chief", 0) if task_id == 0 else ("worker", task_id - 1)
    return spec, task_type, task_id


def _role(spec, task_type, task_id, source):
    spec = {job: hosts for job, hosts in spec.items() if hosts}
    spec, task_type, task_id = _promote_worker_zero(spec, task_type, task_id)
    return ClusterRole(task_type, task_id, spec, source)


def _from_flags(job_name, task_index, ps_hosts, worker_hosts):
    where = "--job_name/--task_index/--ps_hosts/--worker_hosts"
    if job_name not in _CLASSIC_JOBS:
        raise ClusterError(f"--job_name must be one of {', '.join(_CLASSIC_JOBS)}; found {job_name!r}")
    if task_index is None:
        raise ClusterError(f"--job_name={job_name} needs --task_index")
    if not worker_hosts:
        raise ClusterError(f"--job_name={job_name} needs --worker_hosts (the chief is worker 0)")
    spec = {"ps": list(ps_hosts), "worker": list(worker_hosts)}
    _check_spec(spec, where)
    if job_name == "evaluator":
        if task_index != 0:
            raise ClusterError(f"there is one evaluator, so --task_index must be 0; found {task_index}")
        return _role(spec, "evaluator", 0, "flags")
    count = len(spec[job_name])
    if not 0 <= task_index < count:
        raise ClusterError(
            f"--task_index={task_index} is out of range for --job_name={job_name}, which lists "
            f"{count} host(s) in --{job_name}_hosts; expected 0 to {count - 1}")
    return _role(spec, job_name, task_index, "flags")


def _parse_tf_config(text):
    try:
        config = tf_config.decode(text)
    except tf_config.TFConfigError as error:
        raise ClusterError(str(error)) from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not isinstance(config.get("task"), dict):
        raise ClusterError(
            'TF_CONFIG must be {"cluster": {job: [host:port, ...]}, "task": {"type": ..., "index": ...}}; '
            f"found {text[:200]!r}")
    task = config["task"]
    task_type, task_id = task.get("type"), task.get("index", 0)
    if task_type not in _TASK_TYPES:
        raise ClusterError(f"TF_CONFIG task type must be one of {', '.join(_TASK_TYPES)}; found {task_type!r}")
    if not isinstance(task_id, int) or isinstance(task_id, bool) or task_id < 0:
        raise ClusterError(f"TF_CONFIG task index must be a non-negative integer; found {task_id!r}")
    unknown = set(config["cluster"]) - set(_TASK_TYPES)
    if unknown:
        raise ClusterError(f"TF_CONFIG cluster has unknown job(s) {sorted(unknown)}; expected {_TASK_TYPES}")
    _check_spec(config["cluster"], "TF_CONFIG cluster")
    if len(config["cluster"].get("chief", [])) > 1:
        raise ClusterError("TF_CONFIG cluster lists more than one chief; there must be exactly one")
    return config


def _from_tf_config(text):
    config = _parse_tf_config(text)
    task_type, task_id = config["task"]["type"], config["task"].get("index", 0)
    spec = {job: hosts for job, hosts in config["cluster"].items() if job != "evaluator"}
    if task_type != "evaluator" and task_id >= len(spec.get(task_type, [])):
        raise ClusterError(
            f"TF_CONFIG task {task_type}:{task_id} is not in its cluster, whose {task_type!r} job "
            f"lists {len(spec.get(task_type, []))} task(s)")
    return _role(spec, task_type, task_id, "tf_config")


def _port_base(job_id, variable, environ):
    """The job's first port: BWTF_PORT_BASE, else derived from the numeric job id."""
    override = environ.get(_PORT_BASE_VARIABLE, "").strip()
    if override:
        if not override.isdigit() or not 1024 <= int(override) <= 65535 - _PORTS_PER_JOB:
            raise ClusterError(f"{_PORT_BASE_VARIABLE} must be a port in 1024-{65535 - _PORTS_PER_JOB}; "
                               f"found {override!r}")
        return int(override)
    digits = re.match(r"\d+", job_id or "")
    if not digits:
        raise ClusterError(f"{variable} must start with the numeric job id; found {job_id!r}")
    return _PORT_FLOOR + _PORTS_PER_JOB * (int(digits.group()) % _PORT_SLOTS)


def _split_ps_workers(num_tasks, num_ps, where):
    if num_ps < 0:
        raise ClusterError(f"--num_ps must be >= 0; found {num_ps}")
    if num_ps >= num_tasks:
        raise ClusterError(
            f"{where} has {num_tasks} task(s) but --num_ps={num_ps}; at least one task must be a "
            f"worker, so request more tasks or lower --num_ps")
    return {"ps": num_ps, "worker": num_tasks - num_ps} if num_ps else {"worker": num_tasks}


def _int_variable(environ, name):
    value = environ.get(name, "")
    if not is_rank_number(value):
        raise ClusterError(f"{name} must be a non-negative integer; found {value!r}")
    return int(value)


def expand_hostlist(text):
    """Slurm's compressed host list as names: "nid[001-003,7],login2" -> nid001 nid002 nid003 nid007 login2."""
    hosts = []
    for item in _split_outside_brackets(text, "SLURM_STEP_NODELIST"):
        hosts.extend(_expand_host_item(item))
    return hosts


def _split_outside_brackets(text, variable):
    items, depth, current = [], 0, []
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            break
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ClusterError(f"{variable} has unbalanced brackets: {text!r}")
    items.append("".join(current))
    if not all(items):
        raise ClusterError(f"{variable} has an empty host name: {text!r}")
    return items


def _expand_host_item(item):
    match = re.match(r"^([^\[\]]*)\[([^\]]*)\](.*)$", item)
    if not match:
        return [item]
    prefix, ranges, rest = match.groups()
    names = []
    for part in ranges.split(","):
        first, _, last = part.partition("-")
        if not first.isdigit() or not (last or first).isdigit() or int(last or first) < int(first):
            raise ClusterError(f"SLURM_STEP_NODELIST range {part!r} in {item!r} is not N or N-M with N <= M")
        for number in range(int(first), int(last or first) + 1):
            names.extend(f"{prefix}{number:0{len(first)}d}{tail}" for tail in _expand_host_item(rest))
    return names


def expand_tasks_per_node(text):
    """Slurm's "2(x3),1" as [2, 2, 2, 1]."""
    counts = []
    for part in text.split(","):
        match = re.match(r"^(\d+)(?:\(x(\d+)\))?$", part.strip())
        if not match:
            raise ClusterError(f"SLURM_STEP_TASKS_PER_NODE must look like '2(x3),1'; found {text!r}")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return counts


def place_tasks(hosts, num_ps, base_port, where):
    """The roles of a job whose rank r runs on ``hosts[r]``: (roles by rank, cluster spec).

    Rank 0 is the chief. The ps tasks take the last rank of the last node, of
    the node before it, and so on (round robin while more ps are wanted), so
    they spread over the nodes and stay off the chief's node as long as others
    exist; the remaining ranks are workers in rank order. A task's port is
    ``base_port`` plus its index among the ranks on its host.
    """
    jobs = _split_ps_workers(len(hosts), num_ps, where)
    nodes = list(dict.fromkeys(hosts))
    spare = {node: [r for r, host in enumerate(hosts) if host == node and r != 0] for node in nodes}
    ps_ranks = []
    while len(ps_ranks) < jobs.get("ps", 0):
        for node in reversed(nodes):
            if spare[node] and len(ps_ranks) < jobs["ps"]:
                ps_ranks.append(spare[node].pop())
    ps_ranks.sort()
    addresses = [f"{host}:{base_port + hosts[:rank].count(host)}" for rank, host in enumerate(hosts)]
    worker_ranks = [rank for rank in range(len(hosts)) if rank not in ps_ranks]
    spec = {"chief": [addresses[0]], "worker": [addresses[r] for r in worker_ranks[1:]],
            "ps": [addresses[r] for r in ps_ranks]}
    roles = [("ps", ps_ranks.index(r)) if r in ps_ranks else
             ("chief", 0) if r == 0 else ("worker", worker_ranks.index(r) - 1) for r in range(len(hosts))]
    return roles, {job: addresses for job, addresses in spec.items() if addresses}


def _scheduler_role(hosts, rank, num_ps, environ, job_id_variable, source, where):
    """This rank's ClusterRole in a scheduler's job whose rank r runs on ``hosts[r]``."""
    base = _port_base(environ.get(job_id_variable), job_id_variable, environ)
    crowded = max(set(hosts), key=hosts.count)
    if hosts.count(crowded) > _PORTS_PER_JOB and not environ.get(_PORT_BASE_VARIABLE, "").strip():
        raise ClusterError(
            f"{where} runs {hosts.count(crowded)} tasks on {crowded}, but the job-id port scheme leaves "
            f"{_PORTS_PER_JOB} ports per job and node; set {_PORT_BASE_VARIABLE} to the first of a free range")
    roles, spec = place_tasks(hosts, num_ps, base, where)
    task_type, task_id = roles[rank]
    return ClusterRole(task_type, task_id, spec, source)


def _from_slurm(environ, num_ps):
    missing = [name for name in _SLURM_VARIABLES if not environ.get(name)]
    if missing:
        raise ClusterError(
            f"Slurm cluster requested but {', '.join(missing)} is not set; run the task under "
            "'srun' inside an allocation, or choose another --cluster source")
    num_tasks = _int_variable(environ, "SLURM_STEP_NUM_TASKS")
    rank = _int_variable(environ, "SLURM_PROCID")
    nodes = expand_hostlist(environ["SLURM_STEP_NODELIST"])
    per_node = expand_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"])
    if len(nodes) != len(per_node) or sum(per_node) != num_tasks:
        raise ClusterError(
            f"cannot lay out the Slurm step: SLURM_STEP_NODELIST names {len(nodes)} node(s) and "
            f"SLURM_STEP_TASKS_PER_NODE={environ['SLURM_STEP_TASKS_PER_NODE']!r} {len(per_node)} with "
            f"{sum(per_node)} task(s), but SLURM_STEP_NUM_TASKS={num_tasks}")
    if rank >= num_tasks:
        raise ClusterError(f"SLURM_PROCID={rank} but the step has only {num_tasks} task(s)")
    hosts = [node for node, count in zip(nodes, per_node) for _ in range(count)]
    where = f"the Slurm step ({environ['SLURM_STEP_NODELIST']})"
    if num_tasks == 1:
        return ClusterRole("chief", 0, {}, "slurm")
    return _scheduler_role(hosts, rank, num_ps, environ, "SLURM_JOB_ID", "slurm", where)


def is_rank_number(text):
    """True for a plain non-negative decimal number ("12"), false for "²", "١٢" or "-1"."""
    return re.fullmatch(r"\s*[0-9]+\s*", text or "") is not None


def _first_variable(environ, names):
    for name in names:
        if environ.get(name, "") != "":
            return name
    return None


def _from_pbs(environ, num_ps):
    node_file = environ.get("PBS_NODEFILE")
    rank_variable = _first_variable(environ, MPI_RANK_VARIABLES)
    if not node_file or rank_variable is None:
        raise ClusterError(
            "PBS cluster requested but PBS_NODEFILE or a rank variable "
            f"({', '.join(MPI_RANK_VARIABLES)}) is not set; launch with mpiexec/aprun inside the job")
    try:
        with open(node_file, encoding="utf-8") as lines:
            slots = [line.strip() for line in lines if line.strip()]
    except OSError as error:
        raise ClusterError(f"cannot read PBS_NODEFILE {node_file}: {error.strerror}") from None
    size_variable = _first_variable(environ, _SIZE_VARIABLES)
    num_tasks = _int_variable(environ, size_variable) if size_variable else len(slots)
    rank = _int_variable(environ, rank_variable)
    if not slots or num_tasks > len(slots) or rank >= num_tasks:
        raise ClusterError(
            f"PBS_NODEFILE {node_file} lists {len(slots)} slot(s), {size_variable or 'the job'} says "
            f"{num_tasks} task(s) and {rank_variable}={rank}; expected rank < tasks <= slots")
    if num_tasks == 1:
        return ClusterRole("chief", 0, {}, "pbs")
    return _scheduler_role(slots[:num_tasks], rank, num_ps, environ, "PBS_JOBID", "pbs",
                           f"the PBS job ({node_file})")


def _gpus_of_this_node(environ):
    """The node's GPU ids this task was given, and where they came from; ([], None) when none are known."""
    listed = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if listed:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()], f"CUDA_VISIBLE_DEVICES={listed}"
    count = environ.get(_GPUS_PER_NODE_VARIABLE, "").strip()
    if not count:
        return [], None
    if not count.isdigit():
        raise ClusterError(f"{_GPUS_PER_NODE_VARIABLE} must be a number of GPUs per node; found {count!r}")
    return [str(index) for index in range(int(count))], f"{_GPUS_PER_NODE_VARIABLE}={count}"


def visible_devices(role, environ):
    """The CUDA_VISIBLE_DEVICES this task should run with, or None to leave it as it is.

    One GPU per training task, none for the ps tasks and the evaluator: the
    i-th training task (chief or worker, in cluster order) on a host keeps the
    i-th of the node's GPUs. Raises ClusterError when a node runs more training
    tasks than it has GPUs.
    """
    if not role.is_distributed:
        return None
    if role.task_type in ("ps", "evaluator"):
        return ""
    gpus, source = _gpus_of_this_node(environ)
    if not gpus:
        return None
    host = role.address.rsplit(":", 1)[0]
    training = role.cluster_spec.get("chief", []) + role.cluster_spec.get("worker", [])
    on_host = [address for address in training if address.rsplit(":", 1)[0] == host]
    index = on_host.index(role.address)
    if index >= len(gpus):
        raise ClusterError(
            f"{host} runs {len(on_host)} training tasks but this task sees {len(gpus)} GPU(s) ({source}); "
            f"run at most {len(gpus)} chief/worker task(s) per node, or request more GPUs per node")
    return gpus[index]


def log_role(role, environ):
    """Logs ``role.describe()``: on the console for the chief, or for any task under a scheduler.

    Under bwtf-launch every task shares one TF_CONFIG, so the chief's line
    shows the whole cluster; the other tasks' lines go to their full logs.
    """
    console = role.is_chief or role.source == "local" or under_scheduler(role, environ)
    logging.info("%s", role.describe(), extra=None if console else bwtf.FILE_ONLY)


def under_scheduler(role, environ):
    """True when Slurm or PBS placed this task, where it runs matters: the tasks may be on many hosts."""
    return role.source in ("slurm", "pbs") or any(name in environ for name in ("SLURM_JOB_ID", "PBS_JOBID"))


def describe_placement(role, environ):
    """One line naming this task, its scheduler rank, its node and the GPUs it sees."""
    rank = next((environ[name] for name in SCHEDULER_RANK_VARIABLES if environ.get(name, "").isdigit()), "-")
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    seen = "CUDA_VISIBLE_DEVICES unset" if devices is None else f"CUDA_VISIBLE_DEVICES='{devices}'"
    return f"task {role.task_type}:{role.task_id} (rank {rank}) on {socket.gethostname()}, {seen}"


def _auto_source(environ, job_name, ps_hosts, worker_hosts):
    if job_name or ps_hosts or worker_hosts:
        return "flags"
    if environ.get("TF_CONFIG", "").strip():
        return "tf_config"
    if environ.get("SLURM_STEP_NUM_TASKS"):
        return "slurm"
    if environ.get("PBS_NODEFILE") and _first_variable(environ, MPI_RANK_VARIABLES):
        return "pbs"
    return "local"


def resolve(source="auto", job_name=None, task_index=None, ps_hosts=(), worker_hosts=(), num_ps=1):
    """Resolves this process's ClusterRole (``log_role`` logs it, once the task's log file is open).

    Raises ClusterError when the chosen source is missing, malformed or
    inconsistent; the message names the flag or variable at fault.
    """
    environ = os.environ  # SlurmClusterResolver reads it too, so there is one source of truth.
    if source not in SOURCES:
        raise ClusterError(f"--cluster must be one of {', '.join(SOURCES)}; found {source!r}")
    if source not in ("auto", "flags") and (job_name or ps_hosts or worker_hosts):
        raise ClusterError(f"--cluster={source} contradicts --job_name/--ps_hosts/--worker_hosts; drop one")
    if task_index is not None and not job_name:
        raise ClusterError("--task_index needs --job_name (and --worker_hosts)")
    chosen = _auto_source(environ, job_name, ps_hosts, worker_hosts) if source == "auto" else source
    if chosen == "flags":
        role = _from_flags(job_name, task_index, ps_hosts, worker_hosts)
    elif chosen == "tf_config":
        if not environ.get("TF_CONFIG", "").strip():
            raise ClusterError("--cluster=tf_config but the TF_CONFIG environment variable is empty or unset")
        role = _from_tf_config(environ["TF_CONFIG"])
    elif chosen == "slurm":
        role = _from_slurm(environ, num_ps)
    elif chosen == "pbs":
        role = _from_pbs(environ, num_ps)
    else:
        role = ClusterRole("chief", 0, {}, "local")
    return role
