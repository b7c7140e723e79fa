"""Fault harness of bwtf.ckpt: kill, race and corrupt real writers, then check.

  python scripts/crash_consistency.py --trials=200          # kills: the long run
  python scripts/crash_consistency.py --trials=22 --json    # what CI runs
  python scripts/crash_consistency.py --scenario=two_writers --trials=20
  python scripts/crash_consistency.py --scenario=all --json # each scenario once

Scenarios (``--scenario``; ``--trials`` repeats each):
  kills            SIGKILL the writer at every failpoint of a save (the snapshot,
                   each group, the merge, fsync, manifest, rename, between the two
                   pointer writes) or at a random time; then a new owner's start-up
                   (take_ownership) must leave LATEST and TF's checkpoint file
                   naming the newest intact checkpoint, which restores exactly.
  two_writers      a second writer starts on the same model_dir while the first
                   saves: the first is fenced (exits 73) and deleted nothing of
                   the second's; the second finishes (0).
  prune_loop       ``bwtf-ckpt prune`` in a loop and a rogue process deleting old
                   checkpoints while the writer saves: the writer finishes (0),
                   the CLI refuses (2, one line) while the writer owns model_dir.
  reader_deletes   a reader restores the newest checkpoint in a loop while the
                   writer's retention (keep 1) deletes under it: the reader never
                   fails, and every restore holds the values of the step it names.
  train_corrupt_newest  bwtf-train to --train_steps, newest manifest garbled,
                   rerun: resumes from the newest intact and trains to the limit.
  train_pointer_crash   bwtf-train killed between its two pointer writes, rerun:
                   restores that checkpoint (not step 0) and never replaces it.
  slow_worker      bwtf-launch, 1 ps + 3 workers + evaluator, one worker
                   SIGSTOPped 0.9 s of every second: every task exits 0, the run
                   ends with exactly ckpt-N at --train_steps=N, LATEST and TF's
                   checkpoint file name it (a late worker never moves them
                   back), and the evaluator's history ends with ckpt-N, step N.
  second_sigterm   two SIGTERMs to bwtf-launch half a second apart: it kills
                   every task at once and ends (it used to hang forever).
  ctrl_c           SIGINT to bwtf-launch's process group (a terminal's Ctrl-C):
                   the chief saves at the step it stopped at, exit 75.
  chief_fails_at_startup  a bad --data_dir: the chief exits 2 and every other
                   task (ps, workers, evaluator) ends with a line saying the
                   chief failed; bwtf-launch exits 2 within seconds.
  gcs_writer_reader  a writer on gs:// (retention keep 1) and a long-lived
                   reader against gcp-storage-emulator: the reader follows
                   every new checkpoint to the last, each restore exact.

After every bwtf-launch scenario the script also checks: bwtf-launch's exit
status; one end line per task; no traceback on the console; no process of the
run left (each carries a mark in its environment, looked up in /proc); every
checkpoint the chief reported saved still verifies; and the newest intact one
restores with a stock reader, its name, manifest step and stored global_step
agreeing.

Each trial starts a writer process that saves steps 1, 2, 3, ... with a
GatheredSaver (several groups per save, partitioned and plain variables, a
retention of 2) where every variable holds a value derived from the step. The
writer is killed with SIGKILL either by a failpoint (BWTF_CKPT_FAILPOINT,
deterministic: every stage of a save, at several saves) or by a timer. After
each kill this script asserts that
  * the newest intact checkpoint is exactly the last one whose commit had
    completed (failpoints) or at least the last one the writer reported saved
    (timed kills);
  * it restores through a GatheredSaver into a fresh graph, and every value
    equals what was saved at that step.
It exits 1 on the first violated trial and prints the reason.
"""
import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np

STAGES_BEFORE_COMMIT = ("group_written", "snapshot_taken", "merged", "synced",
                        "manifest_partial", "manifest_written")
STAGES_AFTER_COMMIT = ("committed", "pointer_partial", "pointer_written", "state_written")
_GROUP_BYTES = 64 * 1024


def _build_graph(tf):
    tf.compat.v1.train.get_or_create_global_step()
    big = tf.compat.v1.get_variable("big", [256, 256], initializer=tf.zeros_initializer())
    parts = tf.compat.v1.get_variable("parts", [96, 10], initializer=tf.zeros_initializer(),
                                      partitioner=tf.compat.v1.fixed_size_partitioner(3))
    small = tf.compat.v1.get_variable("small", [10], initializer=tf.zeros_initializer())
    return {"big": big, "parts": parts, "small": small}


def expected_values(step):
    values = {"big": step + np.arange(256 * 256, dtype=np.float32).reshape(256, 256) * 1e-3,
              "parts": step * 2 + np.arange(960, dtype=np.float32).reshape(96, 10),
              "small": np.full([10], -float(step), np.float32)}
    return {k: v.astype(np.float32) for k, v in values.items()}


def _policy(keep_last=2):
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    return ckpt.CheckpointPolicy(keep_last=keep_last, max_group_bytes=_GROUP_BYTES)


def run_writer(model_dir, saves, first=1, keep_last=2, pause=0.0):
    """The process under test: saves steps first..first+saves-1, printing each
    after it returns; a fenced writer exits with FencedError.exit_code."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    try:
        _write_steps(tf, ckpt, model_dir, range(first, first + saves), keep_last, pause)
    except ckpt.FencedError as e:
        print(f"fenced: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    return 0


def _write_steps(tf, ckpt, model_dir, steps, keep_last, pause):
    with tf.Graph().as_default():
        variables = _build_graph(tf)
        step_var = tf.compat.v1.train.get_global_step()
        value_ph = {k: tf.compat.v1.placeholder(tf.float32, v.shape) for k, v in variables.items()}
        step_ph = tf.compat.v1.placeholder(tf.int64, [])
        assign = tf.group([tf.compat.v1.assign(variables[k], value_ph[k]) for k in variables]
                          + [tf.compat.v1.assign(step_var, step_ph)])
        scaffold = ckpt.gathered_scaffold(model_dir, _policy(keep_last))
        scaffold.finalize()
        with tf.compat.v1.Session() as sess:
            sess.run(scaffold.init_op)
            print("ready", flush=True)
            for step in steps:
                feed = {value_ph[k]: v for k, v in expected_values(step).items()}
                sess.run(assign, {**feed, step_ph: step})
                scaffold.saver.save(sess, None, global_step=step)
                print(f"saved {step}", flush=True)
                time.sleep(pause)


def check_pointers_after_restart(model_dir, tf, ckpt):
    """A new owner's start-up repairs the pointers: None, or why not."""
    from bwtf.ckpt import fence  # pylint: disable=import-outside-toplevel
    fence.release_all()
    ref = ckpt.take_ownership(model_dir)
    fence.release_all()
    pointed = tf.train.latest_checkpoint(model_dir)
    if (ref is None) != (pointed is None) or (ref is not None and pointed != ref.path):
        return f"after start-up TF's checkpoint file names {pointed}, the newest intact is {ref}"
    return None


def restore_and_compare(model_dir, path, tf, ckpt):
    """Restores ``path`` (a checkpoint prefix) into a fresh graph: (step, problem or None)."""
    with tf.Graph().as_default():
        variables = _build_graph(tf)
        reads = {k: (v.as_tensor() if hasattr(v, "as_tensor") else v.read_value())
                 for k, v in variables.items()}
        saver = ckpt.GatheredSaver(model_dir, _policy())
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, path)
            values = sess.run(reads)
            step = int(sess.run(tf.compat.v1.train.get_global_step()))
    restored_path, named = saver.last_restored
    if named is not None and named != step:
        return step, f"restored global_step {step} from {restored_path}, which names {named}"
    for name, want in expected_values(step).items():
        if not np.array_equal(values[name], want):
            return step, f"{name} restored from {restored_path} differs from what step {step} saved"
    return step, None


def check_restores(model_dir, want_step, tf, ckpt):
    """Returns None if the newest intact checkpoint is as expected, else why not."""
    ref = ckpt.latest_intact_checkpoint(model_dir)
    got = None if ref is None else ref.step
    if want_step is not None and (got or 0) != want_step:  # 0: no checkpoint yet
        return f"newest intact step is {got}, expected {want_step or None}"
    if ref is None:
        return None
    step, problem = restore_and_compare(model_dir, ref.path, tf, ckpt)
    if problem is None and step != ref.step:
        problem = f"restored global_step {step} from {ref.path}"
    return problem


def failpoint_trials(groups_per_save):
    trials = []
    for save in (1, 2, 3):
        trials.append(("group_written", (save - 1) * groups_per_save + 1, save - 1))
        trials.append(("group_written", save * groups_per_save, save - 1))
        trials += [(stage, save, save - 1) for stage in STAGES_BEFORE_COMMIT[1:]]
        trials += [(stage, save, save) for stage in STAGES_AFTER_COMMIT]
    return trials


def _writer_cmd(model_dir, saves, *extra):
    return [sys.executable, os.path.abspath(__file__), "--writer", model_dir,
            f"--saves={saves}", *extra]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run_trial(trial, workdir):
    """Runs one trial; returns (model_dir, description, expected step or None,
    steps the writer reported saved, the writer's exit status)."""
    model_dir = tempfile.mkdtemp(dir=workdir)
    env = _env()
    if trial[0] == "timed":
        # The delay counts from "ready" (TensorFlow imported, graph built), so
        # every timed kill lands among the saves, not in the start-up.
        proc = subprocess.Popen(_writer_cmd(model_dir, 100), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        while proc.stdout.readline().strip() not in ("ready", ""):
            pass
        time.sleep(trial[1])
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
        return (model_dir, f"timed kill {trial[1]:.2f}s after start-up", None, saved,
                proc.returncode)
    stage, nth, want = trial
    env["BWTF_CKPT_FAILPOINT"] = f"{stage}:{nth}"
    proc = subprocess.run(_writer_cmd(model_dir, 3), env=env, capture_output=True,
                          text=True, check=False)
    return model_dir, f"failpoint {stage}:{nth}", want, [], proc.returncode


def scenario_kills(args, workdir, tf, ckpt, summary):
    rng = random.Random(args.seed)
    fixed = failpoint_trials(groups_per_save=2)
    trials = [fixed[i % len(fixed)] for i in range(min(args.trials, len(fixed)))]
    trials += [("timed", rng.uniform(0.0, 2.0)) for _ in range(args.trials - len(trials))]
    for trial in trials:
        model_dir, what, want, saved, rc = run_trial(trial, workdir)
        problem = None
        if trial[0] != "timed" and rc != -signal.SIGKILL:
            problem = f"the writer was not killed (exit status {rc})"
        problem = problem or check_restores(model_dir, want, tf, ckpt)
        ref = ckpt.latest_intact_checkpoint(model_dir)
        if problem is None and saved and (ref is None or ref.step < max(saved)):
            problem = f"step {max(saved)} was reported saved but the newest intact is {ref}"
        problem = problem or check_pointers_after_restart(model_dir, tf, ckpt)
        if problem:
            return f"{what}: {problem} (model_dir {model_dir})"
        summary["trials"] += 1
        summary["timed" if trial[0] == "timed" else "failpoint"] += 1
        summary["restored_steps"].append(None if ref is None else ref.step)
        if not args.json:
            print(f"ok  {what}: newest intact step {None if ref is None else ref.step}")
    return None


def _start_writer(model_dir, saves, *extra):
    """A --writer process; stdout is a pipe (read as it saves), stderr an
    unnamed file, so that a chatty writer never stalls on a pipe nobody reads."""
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(_writer_cmd(model_dir, saves, *extra), env=_env(),
                            stdout=subprocess.PIPE, stderr=err, text=True)
    proc.error_file = err
    return proc


def _wait_saved(proc, count):
    """Reads the writer's output until it reported ``count`` saves; returns them."""
    saved = []
    while len(saved) < count:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("saved"):
            saved.append(int(line.split()[1]))
    return saved


def _start_reader(model_dir, saves):
    """A --reader process whose output goes to unnamed files, not pipes: a
    pipe nobody reads while the writer runs fills up and stalls the reader,
    and a reader stalled mid-download stalls the single-threaded GCS emulator
    for the writer too."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--reader", model_dir,
                             f"--saves={saves}"], env=_env(), stdout=out, stderr=err, text=True)
    proc.output_files = (out, err)
    return proc


def _finish_reader(proc, timeout=300):
    """(returncode, stdout, stderr) of a _start_reader process; returncode is
    None when it did not end within ``timeout`` seconds (it is then killed)."""
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        returncode = None
    texts = []
    for stream in proc.output_files:
        stream.seek(0)
        texts.append(stream.read())
        stream.close()
    return returncode, *texts


def _finish(proc, timeout=300):
    """(returncode, saved steps, stderr) of a _start_writer process."""
    out, _ = proc.communicate(timeout=timeout)
    proc.error_file.seek(0)
    err = proc.error_file.read()
    proc.error_file.close()
    saved = [int(line.split()[1]) for line in out.splitlines() if line.startswith("saved")]
    return proc.returncode, saved, err


def _check_newest(model_dir, tf, ckpt):
    ref = ckpt.latest_intact_checkpoint(model_dir)
    if ref is None:
        return "no intact checkpoint is left"
    step, problem = restore_and_compare(model_dir, ref.path, tf, ckpt)
    return problem or (None if step == ref.step else f"restored step {step} from {ref.path}")


def scenario_two_writers(args, workdir, tf, ckpt, summary):
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    first = _start_writer(model_dir, 1000, "--pause=0.05")
    early = _wait_saved(first, 3)
    second = subprocess.run(_writer_cmd(model_dir, 4, "--first=100000"), env=_env(),
                            capture_output=True, text=True, check=False, timeout=300)
    first_rc, first_saved, first_err = _finish(first)
    if second.returncode != 0:
        return f"the second writer exited {second.returncode}: {second.stderr[-2000:]}"
    if first_rc != ckpt.EXIT_FENCED:
        return f"the first writer exited {first_rc}, expected {ckpt.EXIT_FENCED} (fenced): {first_err[-2000:]}"
    fenced_lines = [l for l in first_err.splitlines() if l.startswith("fenced:")]
    if len(fenced_lines) != 1 or "taken over" not in fenced_lines[0]:
        return f"the fenced writer did not say why in one line: {first_err[-2000:]}"
    second_steps = [s.step for s in ckpt.list_checkpoints(model_dir) if s.step >= 100000]
    if second_steps[-2:] != [100002, 100003] or not all(
            s.intact for s in ckpt.list_checkpoints(model_dir) if s.step >= 100000):
        return f"the second writer's checkpoints were harmed: {ckpt.list_checkpoints(model_dir)}"
    summary["trials"] += 1
    summary.setdefault("fenced_after_saves", []).append(len(early + first_saved))
    return _check_newest(model_dir, tf, ckpt)


def scenario_prune_loop(args, workdir, tf, ckpt, summary):
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    writer = _start_writer(model_dir, 60, "--keep_last=2")
    _wait_saved(writer, 1)
    refused = 0
    while writer.poll() is None:
        run = subprocess.run([sys.executable, "-m", "bwtf.ckpt", "prune", model_dir,
                              "--keep_last=1"], env=_env(), capture_output=True, text=True,
                             check=False, timeout=120)
        if run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 \
                and "owned by a running writer" in run.stderr:
            refused += 1
        elif run.returncode != 0 and writer.poll() is None:
            return f"bwtf-ckpt prune exited {run.returncode}: {run.stderr[-2000:]}"
        # A rogue deleter (another user's script) races the writer's retention.
        statuses = ckpt.list_checkpoints(model_dir)
        for status in statuses[:-1]:
            shutil.rmtree(status.directory, ignore_errors=True)
    rc, _, err = _finish(writer)
    if rc != 0:
        return f"the writer exited {rc} while pruned under: {err[-2000:]}"
    summary["trials"] += 1
    summary.setdefault("prunes_refused", []).append(refused)
    return _check_newest(model_dir, tf, ckpt)


def run_reader(model_dir, until_step):
    """Restores the newest checkpoint in a loop until it reaches ``until_step``;
    prints "restored <step>" per restore; exits 1 on a wrong value."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_eager_execution()
    step = -1
    while step < until_step:
        ref = ckpt.latest_intact_checkpoint(model_dir)
        if ref is None:
            time.sleep(0.05)
            continue
        step, problem = restore_and_compare(model_dir, ref.path, tf, ckpt)
        if problem:
            print(f"reader: {problem}", file=sys.stderr, flush=True)
            return 1
        print(f"restored {step}", flush=True)
    return 0


def scenario_reader_deletes(args, workdir, tf, ckpt, summary):
    del args, tf
    model_dir = tempfile.mkdtemp(dir=workdir)
    saves = 40
    writer = _start_writer(model_dir, saves, "--keep_last=1")
    reader = _start_reader(model_dir, saves)
    writer_rc, _, writer_err = _finish(writer)
    reader_rc, reader_out, reader_err = _finish_reader(reader)
    if reader_rc is None:
        return "the reader did not reach the last checkpoint within 300 s"
    if writer_rc != 0:
        return f"the writer exited {writer_rc}: {writer_err[-2000:]}"
    if reader_rc != 0:
        return f"the reader failed ({reader_rc}): {reader_err[-3000:]}"
    restores = [l for l in reader_out.splitlines() if l.startswith("restored")]
    summary["trials"] += 1
    summary.setdefault("reader_restores", []).append(len(restores))
    summary.setdefault("reader_fallbacks", []).append(reader_err.count("cannot be restored"))
    return None


_TRAIN_FLAGS = ("--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
                "--batch_size=4", "--log_every_steps=1", "--eval_steps=1", "--distribution=none",
                "--train_steps=6", "--save_checkpoints_steps=2", "--keep_checkpoints=10")


def _bwtf_train(model_dir, **env):
    """Runs the real training program (one process, synthetic data): (status, log)."""
    full_env = dict(_env(), CUDA_VISIBLE_DEVICES="", **env)
    for name in ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID", "PBS_NODEFILE", "PBS_JOBID",
                 "PMI_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID", "ALPS_APP_PE"):
        full_env.pop(name, None)
    run = subprocess.run([sys.executable, "-m", "bwtf.estimator.train", *_TRAIN_FLAGS,
                          f"--model_dir={model_dir}"], capture_output=True, text=True,
                         timeout=600, env=full_env, check=False)
    return run.returncode, run.stdout + run.stderr


def _text_of(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _manifest_bytes(model_dir, step):
    with open(os.path.join(model_dir, f"ckpt-{step}", "MANIFEST.json"), "rb") as f:
        return f.read()


def scenario_train_corrupt_newest(args, workdir, tf, ckpt, summary):
    """--train_steps=6 with saves at 2/4/6, ckpt-6's manifest garbled, rerun: it
    resumes from ckpt-4 and trains to 6 (not "max_steps already saved")."""
    del args, tf
    model_dir = tempfile.mkdtemp(dir=workdir)
    code, log = _bwtf_train(model_dir)
    if code != 0:
        return f"the first run exited {code}: {log[-2000:]}"
    with open(os.path.join(model_dir, "ckpt-6", "MANIFEST.json"), "w", encoding="utf-8") as f:
        f.write("{garbled")
    kept = _manifest_bytes(model_dir, 4)
    code, log = _bwtf_train(model_dir)
    if code != 0:
        return f"the rerun exited {code}: {log[-2000:]}"
    if "max_steps has already saved" in log or "ckpt-4/model.ckpt-4 (step 4)" not in log:
        return f"the rerun did not resume from ckpt-4: {log[-2000:]}"
    statuses = [(s.step, s.intact) for s in ckpt.list_checkpoints(model_dir, full=True)]
    if statuses != [(2, True), (4, True), (6, True)] or _manifest_bytes(model_dir, 4) != kept:
        return f"after the rerun the checkpoints are {statuses}"
    summary["trials"] += 1
    return None


def scenario_train_pointer_crash(args, workdir, tf, ckpt, summary):
    """The chief killed between its two pointer writes (LATEST written, TF's
    checkpoint file not): the rerun restores that checkpoint, never replaces it."""
    del args, tf
    model_dir = tempfile.mkdtemp(dir=workdir)
    code, log = _bwtf_train(model_dir, BWTF_CKPT_FAILPOINT="pointer_written:1")
    if code != -signal.SIGKILL:
        return f"the first run was not killed at the failpoint ({code}): {log[-2000:]}"
    first = _manifest_bytes(model_dir, 2)
    code, log = _bwtf_train(model_dir)
    if code != 0:
        return f"the rerun exited {code}: {log[-2000:]}"
    # The restore's own line goes to the task's full log file, not the console.
    full_log = log + _text_of(os.path.join(model_dir, "logs", "chief.log"))
    if "ckpt-2/model.ckpt-2 (step 2)" not in log or "Restored " not in full_log:
        return f"the rerun did not restore ckpt-2: {log[-2000:]}"
    steps = [s.step for s in ckpt.list_checkpoints(model_dir) if s.intact]
    if _manifest_bytes(model_dir, 2) != first or steps != [2, 4, 6]:
        return f"ckpt-2 was replaced or steps are missing: {steps}"
    summary["trials"] += 1
    return None


# -- scenarios on a real localhost cluster under bwtf-launch ------------------

_LAUNCH_TRAIN_FLAGS = ("--model=small_cnn", "--use_synthetic_data", "--num_classes=10", "--image_size=32",
                       "--batch_size=4", "--log_every_steps=10", "--eval_steps=1", "--eval_throttle_secs=5",
                       "--keep_checkpoints=1000", "--eval_timeout_secs=300")
_STATUS_LINE = re.compile(r"^\[launch\] (\S+) (?:exited with status (\d+)|stopped: .*|was killed by .*)$", re.M)
_CHIEF_STEP = re.compile(r"^\[chief\] .*(?:\]|\d\d:\d\d:\d\d) step (\d+)/", re.M)
_SAVED = re.compile(r"^\[chief\] .*Saved checkpoint \S*/ckpt-(\d+)/", re.M)


class _Launch:
    """bwtf-launch in its own session; every process it starts carries a mark in
    its environment, so "no process is left" is checked in /proc, not by pid."""

    def __init__(self, workdir, model_dir, launch_args, train_flags, env=None):
        self.mark = uuid.uuid4().hex
        self.log_path = os.path.join(workdir, f"launch-{self.mark[:8]}.log")
        full_env = dict(_env(), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1", BWTF_HARNESS_MARK=self.mark,
                        **(env or {}))
        for name in _ROLE_VARIABLES:
            full_env.pop(name, None)
        self.started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bwtf.estimator.launch", *launch_args, "--", *_LAUNCH_TRAIN_FLAGS,
                 *train_flags, f"--model_dir={model_dir}"],
                stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)

    def output(self):
        return _text_of(self.log_path)

    def wait(self, timeout):
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self):
        for pid in [self.process.pid] + self.left():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.process.wait()

    def left(self):
        """Pids of live processes that carry this launch's mark."""
        pids = []
        needle = f"BWTF_HARNESS_MARK={self.mark}".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in environ and state != b"Z":
                pids.append(int(entry))
        return pids

    def chief_steps(self):
        return [int(s) for s in _CHIEF_STEP.findall(self.output())]

    def wait_for_chief_step(self, at_least, timeout=300):
        """None once the chief logged ``at_least`` steps, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = self.chief_steps()
            if steps and steps[-1] >= at_least:
                return None
            if self.process.poll() is not None:
                return f"bwtf-launch exited {self.process.returncode} early: {self.output()[-3000:]}"
            time.sleep(0.2)
        return f"the chief did not log step {at_least} within {timeout} s: {self.output()[-3000:]}"

    def pid_of(self, task):
        found = re.findall(rf"(?:started |, ){re.escape(task)} \(pid (\d+)\)", self.output())
        return int(found[-1]) if found else None


_ROLE_VARIABLES = ("TF_CONFIG", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST",
                   "SLURM_STEP_TASKS_PER_NODE", "PBS_NODEFILE", "PBS_JOBID", "PMI_RANK", "PMI_SIZE",
                   "PALS_RANKID", "PALS_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                   "ALPS_APP_PE", "BWTF_PORT_BASE", "BWTF_GPUS_PER_NODE", "BWTF_LOG_DIR")


def _tasks(num_ps, num_workers, evaluator):
    names = ["chief"] + [f"worker:{i}" for i in range(num_workers - 1)] + [f"ps:{i}" for i in range(num_ps)]
    return names + (["evaluator"] if evaluator else [])


def _check_launch(run, model_dir, tasks, status, tf, ckpt, summary, final_step=None):
    """What is checked after every launch scenario (see the module docstring); None or why not."""
    output = run.output()
    summary.setdefault("launch_secs", []).append(round(time.monotonic() - run.started, 1))
    if run.process.returncode != status:
        return f"bwtf-launch exited {run.process.returncode}, expected {status}: {output[-3000:]}"
    if "Traceback" in output or "KeyboardInterrupt" in output:
        return f"a traceback reached the console: {output[-3000:]}"
    ended = [m.group(1) for m in _STATUS_LINE.finditer(output)]
    if sorted(ended) != sorted(tasks):
        return f"expected one end line per task {sorted(tasks)}, got {sorted(ended)}: {output[-3000:]}"
    deadline = time.monotonic() + 15
    while run.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    if run.left():
        left = run.left()
        run.kill()
        return f"processes {left} outlived bwtf-launch"
    statuses = {s.step: s for s in ckpt.list_checkpoints(model_dir, full=True)}
    lost = [step for step in map(int, _SAVED.findall(output)) if not statuses.get(step, None)
            or not statuses[step].intact]
    if lost:
        return f"committed checkpoints {lost} are no longer intact: {list(statuses.values())}"
    ref = ckpt.latest_intact_checkpoint(model_dir)
    if ref is None:
        return None if final_step is None else f"no intact checkpoint, expected ckpt-{final_step}"
    problem = _check_train_checkpoint(model_dir, ref, tf)
    if problem is None and final_step is not None and ref.step != final_step:
        problem = f"the run ended with ckpt-{ref.step}, expected ckpt-{final_step} ({list(statuses)})"
    from bwtf.ckpt import commit  # pylint: disable=import-outside-toplevel
    if problem is None and status == 0 and final_step is not None and (
            commit.read_pointer(model_dir) != final_step or tf.train.latest_checkpoint(model_dir) != ref.path):
        problem = (f"LATEST names {commit.read_pointer(model_dir)} and TF's checkpoint file "
                   f"{tf.train.latest_checkpoint(model_dir)}, expected ckpt-{final_step}")
    return problem


def _check_train_checkpoint(model_dir, ref, tf):
    """A trained checkpoint restores with a stock reader; name, manifest and global_step agree."""
    del model_dir
    reader = tf.train.load_checkpoint(ref.path)
    values = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    with open(os.path.join(os.path.dirname(ref.path), "MANIFEST.json"), encoding="utf-8") as f:
        manifest_step = json.load(f)["step"]
    if int(values["global_step"]) != ref.step or manifest_step != ref.step:
        return (f"{ref.path} holds global_step {int(values['global_step'])} and its manifest step "
                f"{manifest_step}")
    bad = [name for name, value in values.items()
           if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.all(np.isfinite(value))]
    return f"{ref.path} holds non-finite values in {bad}" if bad else None


def scenario_ctrl_c(args, workdir, tf, ckpt, summary):
    """Ctrl-C (SIGINT to the launcher's process group): the chief saves at the
    current step, every task ends (one line each), the launcher exits 75."""
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    tasks = _tasks(1, 2, evaluator=True)
    run = _Launch(workdir, model_dir, ["--num_ps=1", "--num_workers=2", "--evaluator"],
                  ["--train_steps=100000", "--save_checkpoints_steps=40"])
    problem = run.wait_for_chief_step(50)
    if problem:
        run.kill()
        return problem
    os.killpg(run.process.pid, signal.SIGINT)
    if run.wait(180) is None:
        return f"bwtf-launch did not end within 180 s of Ctrl-C: {run.output()[-3000:]}"
    problem = _check_launch(run, model_dir, tasks, 75, tf, ckpt, summary)
    if problem:
        return problem
    output = run.output()
    stop = re.search(r"^\[chief\] .*Stopping at step (\d+) after a final save", output, re.M)
    ref = ckpt.latest_intact_checkpoint(model_dir)
    if stop is None or ref is None or ref.step != int(stop.group(1)) or ref.step < run.chief_steps()[-1]:
        return (f"the final save is not at the stop step (newest intact {ref}, last logged step "
                f"{run.chief_steps()[-1]}): {output[-3000:]}")
    summary["trials"] += 1
    return None


def scenario_second_sigterm(args, workdir, tf, ckpt, summary):
    """Two SIGTERMs half a second apart: the launcher kills every task at once
    and ends (it used to hang); whatever was committed stays intact."""
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    tasks = _tasks(1, 2, evaluator=False)
    run = _Launch(workdir, model_dir, ["--num_ps=1", "--num_workers=2"],
                  ["--train_steps=100000", "--save_checkpoints_steps=40"])
    problem = run.wait_for_chief_step(50)
    if problem:
        run.kill()
        return problem
    run.process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    run.process.send_signal(signal.SIGTERM)
    if run.wait(60) is None:
        return f"bwtf-launch did not end within 60 s of a second SIGTERM: {run.output()[-3000:]}"
    if "second SIGTERM: killing every task now" not in run.output():
        return f"no line says the second SIGTERM kills every task: {run.output()[-3000:]}"
    status = run.process.returncode
    if status in (0, None):
        return f"bwtf-launch exited {status} after a second SIGTERM"
    problem = _check_launch(run, model_dir, tasks, status, tf, ckpt, summary)
    summary["trials"] += 0 if problem else 1
    return problem


def scenario_chief_fails_at_startup(args, workdir, tf, ckpt, summary):
    """A chief with a bad --data_dir exits 2 before training: every other task
    ends within seconds with a line that says so, and the launcher exits 2."""
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    tasks = _tasks(1, 3, evaluator=True)
    # The dataset flags the tasks get replace the synthetic input.
    run = _Launch(workdir, model_dir, ["--num_ps=1", "--num_workers=3", "--evaluator"],
                  ["--train_steps=100", "--use_synthetic_data=false", "--dataset=imagenet_archive",
                   "--data_dir=/nonexistent/bwtf-harness-tfds"])
    if run.wait(180) is None:
        return f"bwtf-launch still ran 180 s after a chief that fails at startup: {run.output()[-3000:]}"
    output = run.output()
    chief_line = re.search(r"^\[launch\] chief exited with status 2$", output, re.M)
    others = [line for line in output.splitlines() if _STATUS_LINE.match(line) and "chief exited" not in line]
    if chief_line is None or "/nonexistent/bwtf-harness-tfds" not in output:
        return f"the chief did not fail with one line naming the bad --data_dir: {output[-3000:]}"
    wrong = [line for line in others
             if not re.search(r"(exited with status 2|stopped: the chief failed with status 2)$", line)]
    if wrong:
        return f"tasks ended without saying the chief failed: {wrong}"
    problem = _check_launch(run, model_dir, tasks, 2, tf, ckpt, summary)
    summary["trials"] += 0 if problem else 1
    return problem


def scenario_slow_worker(args, workdir, tf, ckpt, summary):
    """One of three workers is stopped (SIGSTOP) most of the time, so its
    gradients come late: the run still ends with ckpt-N at --train_steps=N,
    every task exits 0, and the pointers name ckpt-N (a worker never writes them)."""
    del args
    model_dir = tempfile.mkdtemp(dir=workdir)
    # Long enough that worker:1 joins: it starts 10 s after the chief (as in
    # train_and_evaluate), and the chief alone makes 30-60 steps a second here.
    steps = 1500
    tasks = _tasks(1, 3, evaluator=True)
    run = _Launch(workdir, model_dir, ["--num_ps=1", "--num_workers=3", "--evaluator"],
                  [f"--train_steps={steps}", "--save_checkpoints_steps=500", "--batch_size=2",
                   "--log_every_steps=5"])
    # Slowed once it trains: a worker slowed through its start-up never joins.
    problem = _wait_for_worker_step(run, os.path.join(model_dir, "logs", "worker-1.log"))
    slow = run.pid_of("worker:1")
    if problem or slow is None:
        run.kill()
        return problem or f"no pid for worker:1: {run.output()[-3000:]}"
    # Slow at training, not at shutdown: the slowing ends once the chief has.
    deadline = time.monotonic() + 600
    while run.process.poll() is None and time.monotonic() < deadline \
            and "[launch] chief exited" not in run.output():
        try:  # stopped 0.9 s of every second
            os.kill(slow, signal.SIGSTOP)
            time.sleep(0.9)
        except OSError:
            break
        finally:
            try:
                os.kill(slow, signal.SIGCONT)
            except OSError:
                pass
        time.sleep(0.1)
    if run.wait(120) is None:
        return f"bwtf-launch did not end with a slow worker: {run.output()[-3000:]}"
    problem = _check_launch(run, model_dir, tasks, 0, tf, ckpt, summary, final_step=steps)
    if problem is None and re.search(r"^\[launch\] \S+ exited with status [1-9]", run.output(), re.M):
        problem = f"a task did not exit 0: {run.output()[-3000:]}"
    if problem is None:
        problem = _check_evaluator_history(model_dir, steps)
    summary["trials"] += 0 if problem else 1
    return problem


def _wait_for_worker_step(run, log_path, timeout=300):
    """None once the worker's full log shows a training step, else why not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(r"(?:\]|\d\d:\d\d:\d\d) step \d+/", _text_of(log_path)):
            return None
        if run.process.poll() is not None:
            return f"bwtf-launch exited {run.process.returncode} early: {run.output()[-3000:]}"
        time.sleep(0.2)
    return f"{log_path} showed no training step within {timeout} s"


def _check_evaluator_history(model_dir, step):
    """The evaluator's last history record names ckpt-<step> and global_step <step>."""
    paths = [os.path.join(model_dir, name, "history.jsonl") for name in sorted(os.listdir(model_dir))
             if name.startswith("eval_") and os.path.exists(os.path.join(model_dir, name, "history.jsonl"))]
    if not paths:
        return f"the evaluator wrote no history in {model_dir}"
    with open(paths[0], encoding="utf-8") as f:
        last = json.loads(f.read().strip().splitlines()[-1])
    if last.get("global_step") != step or f"/ckpt-{step}/" not in str(last.get("checkpoint")):
        return f"the evaluator's last history record is {last}, expected ckpt-{step} at step {step}"
    return None


# -- gs://: a writer and a long-lived reader against the GCS emulator ----------

def _start_gcs_emulator(workdir):
    """(process, STORAGE_EMULATOR_HOST) of gcp-storage-emulator, or (None, why not)."""
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    exe = exe if os.path.exists(exe) else shutil.which("gcp-storage-emulator")
    if exe is None:
        return None, "gcp-storage-emulator is not installed (pip install 'bwtf[test]')"
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "start", f"--port={port}", "--in-memory", f"--default-bucket={_BUCKET}",
                             "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("localhost", port), timeout=1).close()
            return proc, f"http://localhost:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    return None, "the GCS emulator did not listen within 30 s"


_BUCKET = "bwtf-harness"


def scenario_gcs_writer_reader(args, workdir, tf, ckpt, summary):
    """A writer saves to gs:// (retention keep 1) while a long-lived reader
    restores the newest checkpoint in a loop: the reader sees every new
    checkpoint (listings refreshed) up to the last, never fails, and every
    restore holds the values of the step it names."""
    del args
    emulator, host = _start_gcs_emulator(workdir)
    if emulator is None:
        return host
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    try:
        model_dir = f"gs://{_BUCKET}/run-{uuid.uuid4().hex[:8]}"
        saves = 8
        reader = _start_reader(model_dir, saves)
        writer = _start_writer(model_dir, saves, "--keep_last=1", "--pause=0.3")
        writer_rc, _, writer_err = _finish(writer)
        reader_rc, reader_out, reader_err = _finish_reader(reader)
        if reader_rc is None:
            return f"the gs:// reader never saw step {saves} within 300 s of the writer's end"
        if writer_rc != 0:
            return f"the gs:// writer exited {writer_rc}: {writer_err[-2000:]}"
        if reader_rc != 0:
            return f"the gs:// reader failed ({reader_rc}): {reader_err[-3000:]}"
        restored = [int(l.split()[1]) for l in reader_out.splitlines() if l.startswith("restored")]
        if restored != sorted(restored) or len(set(restored)) < 2:
            return f"the gs:// reader did not follow the writer: it restored {restored}"
        problem = _check_newest(model_dir, tf, ckpt)
        if problem is None and ckpt.latest_intact_checkpoint(model_dir).step != saves:
            problem = f"the newest intact gs:// checkpoint is not step {saves}"
        summary["trials"] += 0 if problem else 1
        summary.setdefault("gcs_reader_restores", []).append(len(set(restored)))
        return problem
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        emulator.kill()
        emulator.wait()


SCENARIOS = {
    "train_corrupt_newest": scenario_train_corrupt_newest,
    "train_pointer_crash": scenario_train_pointer_crash,
    "kills": scenario_kills,
    "two_writers": scenario_two_writers,
    "prune_loop": scenario_prune_loop,
    "reader_deletes": scenario_reader_deletes,
    "slow_worker": scenario_slow_worker,
    "second_sigterm": scenario_second_sigterm,
    "ctrl_c": scenario_ctrl_c,
    "chief_fails_at_startup": scenario_chief_fails_at_startup,
    "gcs_writer_reader": scenario_gcs_writer_reader,
}


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="kills", choices=sorted(SCENARIOS) + ["all"])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--reader", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--saves", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--keep_last", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--pause", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = _parse()
    if args.writer:
        return run_writer(args.writer, args.saves, args.first, args.keep_last, args.pause)
    if args.reader:
        return run_reader(args.reader, args.saves)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_eager_execution()
    names = sorted(SCENARIOS) if args.scenario == "all" else [args.scenario]
    summary = {"trials": 0, "failpoint": 0, "timed": 0, "restored_steps": [], "scenarios": names}
    with tempfile.TemporaryDirectory(prefix="bwtf-crash-") as workdir:
        for name in names:
            repeats = 1 if name == "kills" else args.trials
            for _ in range(repeats):
                problem = SCENARIOS[name](args, workdir, tf, ckpt, summary)
                if problem:
                    print(f"FAIL {name}: {problem}", file=sys.stderr)
                    return 1
                if not args.json and name != "kills":
                    print(f"ok  {name}")
    print(json.dumps(summary) if args.json else
          f"{summary['trials']} trials passed ({', '.join(names)}; {summary['failpoint']} "
          f"failpoint, {summary['timed']} timed kills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
