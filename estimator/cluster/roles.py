"""This process's role in the training cluster, and the cluster itself.

    resolve(source="auto", job_name=None, task_index=None, ps_hosts=(),
            worker_hosts=(), num_ps=1) -> ClusterRole   (reads os.environ)
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
3. ``slurm``: inside an ``srun`` step (``SLURM_STEP_NUM_TASKS`` set). TF's
   ``SlurmClusterResolver`` lays out the tasks, mixed on nodes as Slurm placed
   them: the first ``num_ps`` ranks are ps, the rest workers (rank ``num_ps``
   is the chief). Ports start at 20000 + 16 * (job id mod 2000), so two jobs
   sharing a node do not collide (up to 16 tasks per node and job).
4. ``pbs``: ``PBS_NODEFILE`` plus the rank from ``PMI_RANK``, ``PALS_RANKID``,
   ``OMPI_COMM_WORLD_RANK`` or ``ALPS_APP_PE`` (first set wins) and the size
   from ``PMI_SIZE``, ``PALS_SIZE``, ``OMPI_COMM_WORLD_SIZE`` (else one task per
   node-file line). Rank r runs on line r of the node file (mpiexec's default
   block placement); ps/worker split and ports as for Slurm, from ``PBS_JOBID``.
5. ``local``: one process, no cluster.

A single-task Slurm step or PBS job resolves to ``local`` training, with its
source still named. ``num_ps=0`` (collective training) makes every task a
worker. The evaluator is not part of the training cluster; it comes only from
flags or TF_CONFIG.

Deliberately left out: starting servers (``train`` and ``ps_lifecycle`` do
that), GPU assignment (one GPU per process: the launcher sets
``CUDA_VISIBLE_DEVICES``), and any network probing.
"""
import dataclasses
import os
import re
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
_SIZE_VARIABLES = ("PMI_SIZE", "PALS_SIZE", "OMPI_COMM_WORLD_SIZE")
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


def _port_base(job_id, variable):
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


def _from_slurm(environ, num_ps):
    import tensorflow as tf

    missing = [name for name in _SLURM_VARIABLES if not environ.get(name)]
    if missing:
        raise ClusterError(
            f"Slurm cluster requested but {', '.join(missing)} is not set; run the task under "
            "'srun' inside an allocation, or choose another --cluster source")
    num_tasks = _int_variable(environ, "SLURM_STEP_NUM_TASKS")
    rank = _int_variable(environ, "SLURM_PROCID")
    if num_tasks == 1:
        return ClusterRole("chief", 0, {}, "slurm")
    jobs = _split_ps_workers(num_tasks, num_ps, f"the Slurm step ({environ['SLURM_STEP_NODELIST']})")
    try:
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            jobs=jobs, port_base=_port_base(environ["SLURM_JOB_ID"], "SLURM_JOB_ID"),
            gpus_per_node=num_tasks, gpus_per_task=1, auto_set_gpu=False)
        spec = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError) as error:
        raise ClusterError(f"cannot lay out the Slurm step: {error}") from None
    if rank >= num_tasks:
        raise ClusterError(f"SLURM_PROCID={rank} but the step has only {num_tasks} task(s)")
    return _role(spec, resolver.task_type, resolver.task_id, "slurm")


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
    base = _port_base(environ.get("PBS_JOBID"), "PBS_JOBID")
    addresses = []
    for host in slots[:num_tasks]:
        earlier = sum(1 for a in addresses if a.rsplit(":", 1)[0] == host)
        addresses.append(f"{host}:{base + earlier}")
    jobs = _split_ps_workers(num_tasks, num_ps, f"the PBS job ({node_file})")
    spec = {"ps": addresses[:jobs.get("ps", 0)], "worker": addresses[jobs.get("ps", 0):]}
    task_type, task_id = ("ps", rank) if rank < jobs.get("ps", 0) else ("worker", rank - jobs.get("ps", 0))
    return _role(spec, task_type, task_id, "pbs")


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
    """Resolves this process's ClusterRole and logs it once, in one line.

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
    logging.info("%s", role.describe())
    return role
