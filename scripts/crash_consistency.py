"""Crash consistency of bwtf.ckpt: SIGKILL the writer mid-save, then check.

  python scripts/crash_consistency.py --trials=200          # the long run
  python scripts/crash_consistency.py --trials=22 --json    # what CI runs

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
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

STAGES_BEFORE_COMMIT = ("group_written", "merged", "synced", "manifest_partial",
                        "manifest_written")
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
    return {"big": step + np.arange(256 * 256, dtype=np.float32).reshape(256, 256) * 1e-3,
            "parts": step * 2 + np.arange(960, dtype=np.float32).reshape(96, 10),
            "small": np.full([10], -float(step), np.float32)}


def _policy():
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    return ckpt.CheckpointPolicy(keep_last=2, max_group_bytes=_GROUP_BYTES)


def run_writer(model_dir, saves):
    """The process under test: saves steps 1..saves, printing each after it returns."""
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    with tf.Graph().as_default():
        variables = _build_graph(tf)
        step_var = tf.compat.v1.train.get_global_step()
        value_ph = {k: tf.compat.v1.placeholder(tf.float32, v.shape) for k, v in variables.items()}
        step_ph = tf.compat.v1.placeholder(tf.int64, [])
        assign = tf.group([tf.compat.v1.assign(variables[k], value_ph[k]) for k in variables]
                          + [tf.compat.v1.assign(step_var, step_ph)])
        scaffold = ckpt.gathered_scaffold(model_dir, _policy())
        scaffold.finalize()
        with tf.compat.v1.Session() as sess:
            sess.run(scaffold.init_op)
            print("ready", flush=True)
            for step in range(1, saves + 1):
                feed = {value_ph[k]: v for k, v in expected_values(step).items()}
                sess.run(assign, {**feed, step_ph: step})
                scaffold.saver.save(sess, None, global_step=step)
                print(f"saved {step}", flush=True)


def check_restores(model_dir, want_step, tf, ckpt):
    """Returns None if the newest intact checkpoint is as expected, else why not."""
    ref = ckpt.latest_intact_checkpoint(model_dir)
    got = None if ref is None else ref.step
    if want_step is not None and (got or 0) != want_step:  # 0: no checkpoint yet
        return f"newest intact step is {got}, expected {want_step or None}"
    if ref is None:
        return None
    with tf.Graph().as_default():
        variables = _build_graph(tf)
        reads = {k: (v.as_tensor() if hasattr(v, "as_tensor") else v.read_value())
                 for k, v in variables.items()}
        saver = ckpt.GatheredSaver(model_dir, _policy())
        saver.build()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, ref.path)
            values = sess.run(reads)
            step = sess.run(tf.compat.v1.train.get_global_step())
    if step != ref.step:
        return f"restored global_step {step} from {ref.path}"
    for name, want in expected_values(ref.step).items():
        if not np.array_equal(values[name], want):
            return f"{name} restored from {ref.path} differs from what step {ref.step} saved"
    return None


def failpoint_trials(groups_per_save):
    trials = []
    for save in (1, 2, 3):
        trials.append(("group_written", (save - 1) * groups_per_save + 1, save - 1))
        trials.append(("group_written", save * groups_per_save, save - 1))
        trials += [(stage, save, save - 1) for stage in STAGES_BEFORE_COMMIT[1:]]
        trials += [(stage, save, save) for stage in STAGES_AFTER_COMMIT]
    return trials


def _writer_cmd(model_dir, saves):
    return [sys.executable, os.path.abspath(__file__), "--writer", model_dir, f"--saves={saves}"]


def run_trial(trial, workdir):
    """Runs one trial; returns (model_dir, description, expected step or None,
    steps the writer reported saved, the writer's exit status)."""
    model_dir = tempfile.mkdtemp(dir=workdir)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
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


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print a JSON summary")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--writer", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--saves", type=int, default=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = _parse()
    if args.writer:
        run_writer(args.writer, args.saves)
        return 0
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_eager_execution()
    rng = random.Random(args.seed)
    # big (256 KiB) and each group of the small ones: 5 groups per save.
    fixed = failpoint_trials(groups_per_save=2)
    trials = [fixed[i % len(fixed)] for i in range(min(args.trials, len(fixed)))]
    trials += [("timed", rng.uniform(0.0, 2.0)) for _ in range(args.trials - len(trials))]
    summary = {"trials": 0, "failpoint": 0, "timed": 0, "restored_steps": []}
    with tempfile.TemporaryDirectory(prefix="bwtf-crash-") as workdir:
        for trial in trials:
            model_dir, what, want, saved, rc = run_trial(trial, workdir)
            problem = None
            if trial[0] != "timed" and rc != -signal.SIGKILL:
                problem = f"the writer was not killed (exit status {rc})"
            problem = problem or check_restores(model_dir, want, tf, ckpt)
            ref = ckpt.latest_intact_checkpoint(model_dir)
            if problem is None and saved and (ref is None or ref.step < max(saved)):
                problem = f"step {max(saved)} was reported saved but the newest intact is {ref}"
            if problem:
                print(f"FAIL {what}: {problem} (model_dir {model_dir})", file=sys.stderr)
                return 1
            summary["trials"] += 1
            summary["timed" if trial[0] == "timed" else "failpoint"] += 1
            summary["restored_steps"].append(None if ref is None else ref.step)
            if not args.json:
                print(f"ok  {what}: newest intact step {None if ref is None else ref.step}")
    print(json.dumps(summary) if args.json else
          f"{summary['trials']} trials passed ({summary['failpoint']} failpoint, "
          f"{summary['timed']} timed kills)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
