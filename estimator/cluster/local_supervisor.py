"""The processes of a localhost cluster: layout, ports, start, log prefixes, shutdown.

``bwtf.estimator.launch`` turns flags into a :class:`LaunchPlan`; :func:`plan_tasks` lays
the tasks out on free ports (one ``TF_CONFIG`` each) and :class:`Supervisor`
runs them: every output line is prefixed with its task's name; the first
SIGTERM or SIGINT (Ctrl-C) reaches the training tasks as SIGTERM, so that the
chief saves and exits 75 (never the ps tasks, which the chief's final save
still needs), and a second one kills every task at once; a task killed from
outside may be restarted. When the chief has finished (0) or stopped for
requeue (75) the others get a bounded grace period before their process
groups are killed (a worker left running once the chief and every ps have
ended can never finish, so it gets 30 s, and a collective worker cannot go on
without the chief at all, so it is killed 10 s after the chief died); when it failed in any other way
(a bad flag at startup, a crash) they are killed at once, each with one line
saying why, since only the chief writes checkpoints. Children also die with the launcher
(``PR_SET_PDEATHSIG``, set by the ``--task`` wrapper before it execs the
training program), so nothing is left behind even when the launcher is
SIGKILLed.

Deliberately left out: anything scheduler-specific (the batch scripts place
tasks themselves) and retrying a task that failed by itself (a non-zero exit
is a bug or bad input, which a restart would only repeat).
"""
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional

from bwtf import ckpt
import bwtf
from bwtf.estimator.cluster import ports as ports_lib
from bwtf.estimator.cluster import tf_config

_POLL_SECS = 0.2
# A worker still running this long after the chief and every ps have ended
# waits for a ps that will not come back (e.g. its session was being rebuilt
# after a ps restart): it can never finish, so it is stopped. Closing a
# finished worker's session can take up to 60 s where an input pipeline keeps
# tf.data's autotuner (bwtf's own do not: see bwtf.estimator.inputs), and the
# worker's own chief watchdog ends a stuck one after 60 s, saying why
# (ps_lifecycle.start_worker_watchdog): this is the backstop after both.
_ORPHANED_WORKER_GRACE_SECS = 75.0
# A collective worker whose chief failed or died retries its all-reduce with
# the chief forever, deaf to SIGTERM (it never returns to Python); only the chief saves,
# so killing it loses nothing. Its own watchdog (train.py) usually ends it first.
_COLLECTIVE_WORKER_GRACE_SECS = 10.0


class LaunchError(bwtf.UserError, ValueError):
    """The requested cluster cannot be started; the message says why."""


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    num_ps: int
    num_workers: int
    evaluator: bool
    distribution: str
    host: str = "localhost"
    port_base: int = 0
    max_restarts: int = 0
    shutdown_grace_secs: float = 300.0
    log_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str          # "chief", "worker:0", "ps:1", "evaluator": the log prefix
    task_type: str
    tf_config: str     # "" for a single-process run


def validate(plan):
    """Raises LaunchError for a layout that the distribution cannot use."""
    if plan.num_workers < 1:
        raise LaunchError(f"--num_workers counts the chief too, so it must be >= 1; found {plan.num_workers}")
    if plan.num_ps < 0:
        raise LaunchError(f"--num_ps must be >= 0; found {plan.num_ps}")
    if plan.distribution == "ps" and plan.num_ps < 1:
        raise LaunchError("--distribution=ps needs --num_ps >= 1 (the variables live on the ps tasks)")
    if plan.distribution == "collective" and plan.num_ps:
        raise LaunchError(f"--distribution=collective replicates variables, so --num_ps must be 0; found {plan.num_ps}")
    if plan.distribution == "none" and (plan.num_ps or plan.num_workers != 1):
        raise LaunchError(
            "--distribution=none trains in one process: use --num_ps=0 --num_workers=1 "
            f"(found --num_ps={plan.num_ps} --num_workers={plan.num_workers})")


def pick_ports(count, port_base=0):
    """``count`` ports: port_base.. (checked) or, with port_base 0, free ones from the OS."""
    if port_base:
        ports = list(range(port_base, port_base + count))
        taken = [port for port in ports if not ports_lib.port_is_free(port)]
        if taken:
            raise LaunchError(
                f"port(s) {', '.join(map(str, taken))} of --port_base={port_base} (ports {ports[0]}-"
                f"{ports[-1]}) are already in use; stop the process holding them or choose another "
                "--port_base (0 picks free ports)")
        return ports
    sockets = []
    try:
        for _ in range(count):  # Held open together, so the OS hands out distinct ports.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def plan_tasks(plan):
    """The TaskSpecs of ``plan``, chief first, each with its own TF_CONFIG."""
    validate(plan)
    if plan.distribution == "none" and not plan.evaluator:
        return [TaskSpec("chief", "chief", "")]
    ports = iter(pick_ports(plan.num_ps + plan.num_workers, plan.port_base))
    cluster = {"chief": [f"{plan.host}:{next(ports)}"]}
    if plan.num_workers > 1:
        cluster["worker"] = [f"{plan.host}:{next(ports)}" for _ in range(plan.num_workers - 1)]
    if plan.num_ps:
        cluster["ps"] = [f"{plan.host}:{next(ports)}" for _ in range(plan.num_ps)]

    def spec(name, task_type, index):
        return TaskSpec(name, task_type, tf_config.build(cluster, task_type, index))

    tasks = [TaskSpec("chief", "chief", "") if plan.distribution == "none" else spec("chief", "chief", 0)]
    tasks += [spec(f"worker:{i}", "worker", i) for i in range(plan.num_workers - 1)]
    tasks += [spec(f"ps:{i}", "ps", i) for i in range(plan.num_ps)]
    if plan.evaluator:
        tasks.append(spec("evaluator", "evaluator", 0))
    return tasks


def exit_status(returncode):
    """A Popen returncode as a shell would report it (128 + signal when killed)."""
    return 128 - returncode if returncode < 0 else returncode


class TaskProcess:
    """One running task: its process (a group of its own) and its prefixed output."""

    def __init__(self, spec, command, environ, output, log_dir):
        self.spec, self._command, self._environ = spec, command, environ
        self._output, self._log_dir = output, log_dir
        self.process, self.restarts, self.signalled = None, 0, False
        self._reader = None

    def start(self, announce=True):
        """Starts the process; ``announce=False`` leaves the ``started`` line to the caller."""
        environ = dict(self._environ, PYTHONUNBUFFERED="1")
        if self.spec.tf_config:
            environ["TF_CONFIG"] = self.spec.tf_config
        else:
            environ.pop("TF_CONFIG", None)
        self.process = subprocess.Popen(
            self._command, env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._copy_output, args=(self.process.stdout,), daemon=True)
        self._reader.start()
        if announce:
            self._output.line("launch", f"started {self.describe()}")

    def describe(self):
        return f"{self.spec.name} (pid {self.process.pid})"

    def _copy_output(self, stream):
        log_file = None
        if self._log_dir:
            log_file = open(os.path.join(self._log_dir, f"{self.spec.name.replace(':', '-')}.log"),
                            "a", encoding="utf-8", errors="replace")
        try:
            for raw in iter(stream.readline, b""):
                text = raw.decode("utf-8", errors="replace").rstrip("\n")
                self._output.line(self.spec.name, text)
                if log_file:
                    log_file.write(text + "\n")
                    log_file.flush()
        finally:
            stream.close()
            if log_file:
                log_file.close()

    def flush_output(self, timeout_secs=5.0):
        if self._reader:
            self._reader.join(timeout_secs)

    def send(self, signum):
        """Signals the task's whole process group; a no-op once it has ended."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass


class PrefixedOutput:
    """Writes ``[name] line`` to a stream, one whole line at a time from any thread."""

    def __init__(self, stream=None):
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def line(self, name, text):
        with self._lock:
            self._stream.write(f"[{name}] {text}\n")
            self._stream.flush()


class Supervisor:
    """Runs the tasks until the chief has ended, then winds the others down.

    ``run()`` returns the chief's exit status. Restarts are for tasks killed by
    a signal the launcher did not send (a fault), at most ``max_restarts`` each,
    and only while the chief is still training.
    """

    def __init__(self, tasks, plan, output):
        self._tasks = tasks
        self._plan = plan
        self._output = output
        self._signals = []      # Received, not yet handled; appended by the handler only.
        self._forwarded = 0
        self._reported = set()

    def _on_signal(self, signum, frame):
        del frame
        self._signals.append(signum)

    def run(self):
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for task in self._tasks:
                task.start(announce=False)
            self._output.line("launch", "started " + ", ".join(task.describe() for task in self._tasks))
            status = self._wait_for_chief()
            if status in (0, ckpt.EXIT_REQUEUE) or self._forwarded > 1:
                self._wind_down(status)
            else:
                self._stop_after_chief_failure(status)
            return status
        finally:
            self._kill_all()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @property
    def _chief(self):
        return self._tasks[0]

    def _handle_signals(self):
        """Forwards the first signal to the training tasks as SIGTERM; a second one kills everything.

        Returns True once everything has been killed.
        """
        while self._signals:
            signum = self._signals.pop(0)
            self._forwarded += 1
            name = signal.Signals(signum).name
            if self._forwarded > 1:
                self._output.line("launch", f"second {name}: killing every task now")
                self._kill_all()
                return True
            # SIGTERM, whatever came: Ctrl-C means "save and stop" too, and a
            # SIGINT would reach the tasks as KeyboardInterrupt tracebacks.
            self._output.line("launch", f"{name} received: asking the chief, workers and evaluator to save "
                                        "and stop (SIGTERM; the ps tasks stay up for the chief's final "
                                        "save); a second signal kills every task")
            for task in self._tasks:
                if task.spec.task_type != "ps":
                    task.signalled = True
                    task.send(signal.SIGTERM)
        return False

    def _report_end(self, task):
        if task in self._reported:
            return
        self._reported.add(task)
        task.flush_output()
        self._output.line("launch", f"{task.spec.name} exited with status {exit_status(task.process.returncode)}")

    def _maybe_restart(self, task):
        """True when ``task`` was killed from outside and has been started again."""
        code = task.process.returncode
        if code >= 0 or task.signalled or self._forwarded or task.restarts >= self._plan.max_restarts:
            return False
        task.flush_output()
        self._output.line("launch", f"{task.spec.name} was killed by {signal.Signals(-code).name}; "
                                    f"restarting it ({task.restarts + 1}/{self._plan.max_restarts})")
        task.restarts += 1
        task.start()
        return True

    def _wait_for_chief(self):
        while True:
            if self._handle_signals():
                return exit_status(self._chief.process.returncode)
            for task in self._tasks:
                if task.process.poll() is None or task in self._reported or self._maybe_restart(task):
                    continue
                self._report_end(task)
                if task is self._chief:
                    return exit_status(task.process.returncode)
                if task.spec.task_type == "ps" and task.process.returncode != 0:
                    self._output.line("launch", f"{task.spec.name} is gone and will not come back; "
                                                "stopping the job (the chief cannot train without it)")
                    self._signals.append(signal.SIGTERM)
            time.sleep(_POLL_SECS)

    def _stop_after_chief_failure(self, chief_status):
        """Kills every other task at once, one line each: nothing is left for them to do."""
        for task in self._tasks:
            if task.process.poll() is None:
                task.signalled = True
                task.send(signal.SIGKILL)
                task.process.wait()
                task.flush_output()
                self._reported.add(task)
                self._output.line("launch", f"{task.spec.name} stopped: the chief failed with status "
                                            f"{chief_status}")
            else:
                self._report_end(task)

    def _wind_down(self, chief_status):
        """Waits for the other tasks to end by themselves, within the grace period."""
        if chief_status != 0 and not self._forwarded:
            # Workers and the evaluator would wait for a final step that never comes.
            for task in self._tasks:
                if task.spec.task_type in ("worker", "evaluator"):
                    task.signalled = True
                    task.send(signal.SIGTERM)
        deadline = time.monotonic() + self._plan.shutdown_grace_secs
        orphaned_since = None
        # A chief that failed or died strands collective workers; one that
        # finished leaves them finishing the same last step.
        collective_deadline = time.monotonic() + _COLLECTIVE_WORKER_GRACE_SECS if chief_status != 0 \
            else float("inf")
        while time.monotonic() < deadline:
            if self._handle_signals():
                return
            running = [t for t in self._tasks if t.process.poll() is None]
            for task in self._tasks:
                if task.process.poll() is not None:
                    self._report_end(task)
            if not running:
                return
            if self._plan.distribution == "collective" and time.monotonic() > collective_deadline:
                self._stop_stranded_workers(
                    running, f"{_COLLECTIVE_WORKER_GRACE_SECS:.0f}s after the chief failed; a collective "
                    "worker cannot go on without the chief, so it is killed", signal.SIGKILL)
                collective_deadline = float("inf")
            if orphaned_since is None and self._workers_orphaned(running):
                orphaned_since = time.monotonic()
            if orphaned_since is not None and time.monotonic() - orphaned_since > _ORPHANED_WORKER_GRACE_SECS:
                self._stop_stranded_workers(
                    running, f"{_ORPHANED_WORKER_GRACE_SECS:.0f}s after the chief and every ps ended; it "
                    "cannot finish without them, so it is stopped", signal.SIGTERM)
                orphaned_since = float("inf")
            time.sleep(_POLL_SECS)
        names = ", ".join(t.spec.name for t in self._tasks if t.process.poll() is None)
        self._output.line("launch", f"{names} still running {self._plan.shutdown_grace_secs:.0f}s after "
                                    "the chief ended; killing them")

    def _workers_orphaned(self, running):
        has_ps = any(t.spec.task_type == "ps" for t in self._tasks)
        return has_ps and all(t.spec.task_type in ("worker", "evaluator") for t in running) \
            and any(t.spec.task_type == "worker" for t in running)

    def _stop_stranded_workers(self, running, reason, signum):
        """Sends ``signum`` to the running workers; ``reason`` ends the log line that says why."""
        workers = [t for t in running if t.spec.task_type == "worker"]
        if not workers:
            return
        self._output.line("launch", f"{', '.join(t.spec.name for t in workers)} still running {reason}")
        for task in workers:
            task.signalled = True
            task.send(signum)

    def _kill_all(self):
        for task in self._tasks:
            task.send(signal.SIGKILL)
        for task in self._tasks:
            if task.process is not None:
                task.process.wait()
                self._report_end(task)
