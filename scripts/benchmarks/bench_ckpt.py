"""Benchmark bwtf.ckpt on a localhost cluster with 2 ps tasks.

  python scripts/benchmarks/bench_ckpt.py                       # 256 MiB, all figures
  python scripts/benchmarks/bench_ckpt.py --mib=1024 --memory --group_mib=64

Default mode, all in the same run and on the same disk (--dir):
  * training stall per checkpoint: how long save_async blocks the caller
    (the one-step snapshot on the ps), against TF's default Estimator saver,
    Saver(sharded=True), whose save blocks training for all of it (SaveV2
    on each ps; no fsync). Target: at most 1.0x.
  * time until the bwtf checkpoint is durable and committed (snapshot,
    gathered on the chief, fsync, checksums, manifest, rename, pointers; the
    retention that follows is not counted), while the updater below keeps
    training, as a throughput against raw sequential write + fsync of the
    same bytes (measured alone). Target: at least 0.8x raw. Printed beside
    it: the same save with training idle, and the gather floor (every
    variable moved from the ps to the chief in one run, written nowhere),
    which no design that writes from the chief can beat.
  * restore, including the full verification of every checksum (the
    per-process verification cache is cleared first), against TF's restore.
    Target: at most 1.5x.
  * snapshot spread: a thread adds 1 to every variable and to global_step in
    one op, as fast as it can, during each save; the spread is the largest
    minus the smallest per-variable count in the checkpoint (bwtf, and TF's).
    Target 0 for bwtf: the updater applies behind its update gate
    (ckpt.gated_update), as a bwtf worker does; the script exits 1 if a bwtf
    checkpoint has a spread or its name, manifest and stored global_step
    disagree.
  * the ps memory cost of the snapshot buffers (VmRSS of the ps tasks before
    and after the first snapshot).
It prints each figure (median and best of --repeats, with the load average).

--memory mode shows the bounded-memory property: it measures the chief's
peak RSS growth (VmHWM after a reset through /proc/self/clear_refs) during
one bwtf save and one restore, next to the group bound and the model size.
The restore figure is a lower bound: the allocator keeps memory freed after
the save, and that memory is already in the baseline.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

_MIB = 1024 * 1024
_VAR_MIB = 8


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start_ps(cluster, count):
    procs = []
    for index in range(count):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   BENCH_CLUSTER=json.dumps(cluster), BENCH_PS_INDEX=str(index))
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--ps_task"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def _serve_ps():
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    cluster = json.loads(os.environ["BENCH_CLUSTER"])
    tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name="ps",
                         task_index=int(os.environ["BENCH_PS_INDEX"])).join()


def _rss_kib(field):
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak_rss():
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _raw_write_secs(directory, total_bytes):
    path = os.path.join(directory, "raw.bin")
    chunk = os.urandom(_VAR_MIB * _MIB)
    start = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(total_bytes // len(chunk)):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    os.remove(path)
    return elapsed


def _build(tf, ckpt, args, cluster, model_dir):
    setter = tf.compat.v1.train.replica_device_setter(
        ps_tasks=2, worker_device="/job:chief/task:0", cluster=cluster)
    with tf.compat.v1.device(setter):
        step = tf.compat.v1.train.get_or_create_global_step()
        rows = _VAR_MIB * _MIB // 4 // 1024
        variables = [tf.compat.v1.get_variable(f"layer{i}/w", [rows, 1024],
                                               initializer=tf.compat.v1.ones_initializer())
                     for i in range(args.mib // _VAR_MIB)]
    policy = ckpt.CheckpointPolicy(keep_last=1, max_group_bytes=args.group_mib * _MIB)
    gathered = ckpt.GatheredSaver(model_dir, policy, device="/job:chief/task:0/device:CPU:0")
    gathered.build()
    default = tf.compat.v1.train.Saver(sharded=True, max_to_keep=1)
    return step, variables, gathered, default


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _memory_mode(tf, sess, gathered, args):
    base = _rss_kib("VmRSS")
    _reset_peak_rss()
    path = gathered.save(sess, None, global_step=1)
    save_growth = _rss_kib("VmHWM") - base
    base = _rss_kib("VmRSS")
    _reset_peak_rss()
    gathered.restore(sess, path)
    restore_growth = _rss_kib("VmHWM") - base
    if args.json:
        print(json.dumps({"model_mib": args.mib, "group_mib": args.group_mib,
                          "save_growth_mib": save_growth / 1024,
                          "restore_growth_mib": restore_growth / 1024}))
        return
    print(f"model {args.mib} MiB on 2 ps, group bound {args.group_mib} MiB")
    print(f"chief peak RSS growth: save {save_growth / 1024:.0f} MiB, "
          f"restore {restore_growth / 1024:.0f} MiB "
          f"({max(save_growth, restore_growth) / 1024 / args.mib:.2f}x the model size)")


def _proc_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class _Updater:
    """A thread bumping every variable and global_step by 1 in one op, in a loop,
    behind its update gate as bwtf's model_fn builds a worker's update."""

    def __init__(self, tf, sess, step, variables):
        import threading  # pylint: disable=import-outside-toplevel
        from bwtf import ckpt  # pylint: disable=import-outside-toplevel
        self._bump = ckpt.gated_update(
            lambda: tf.group([v.assign_add(tf.ones_like(v)) for v in variables]
                             + [step.assign_add(1)]), stripe=1)
        self._sess = sess
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.updates = 0

    def _run(self):
        while not self._stop.is_set():
            self._sess.run(self._bump)
            self.updates += 1

    def __enter__(self):
        self._thread.start()
        # Saves start once training is under way (and at a step of their own).
        while self.updates < 2 and self._thread.is_alive():
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _spread(tf, prefix, baseline):
    """(max - min per-variable update count, stored global_step) of a checkpoint.

    ``baseline`` holds each variable's value before the updater started: the
    counts are taken from there, since a previous round's restore of TF's own
    (torn) checkpoint leaves the variables at different counts to begin with.
    """
    reader = tf.train.load_checkpoint(prefix)
    counts = [int(round(float(reader.get_tensor(f"layer{i}/w")[0, 0]) - start))
              for i, start in enumerate(baseline)]
    return max(counts) - min(counts), int(reader.get_tensor("global_step"))


def _bwtf_save(tf, sess, gathered, dirs, baseline):
    """One bwtf save while training goes on: (prefix, stall, commit, spread, names agree)."""
    step = gathered.save_async(sess)
    stall = gathered.last_stall_secs
    gathered.wait()
    committed = gathered.last_commit_secs
    prefix = os.path.join(dirs["bwtf"], f"ckpt-{step}", f"model.ckpt-{step}")
    spread, stored = _spread(tf, prefix, baseline)
    manifest = json.load(open(os.path.join(dirs["bwtf"], f"ckpt-{step}", "MANIFEST.json")))
    return prefix, stall, committed, spread, stored == step == manifest["step"]


def _gather_floor_op(tf, variables):
    """One op that moves every variable to the chief and writes it nowhere."""
    with tf.compat.v1.device("/job:chief/task:0/device:CPU:0"):
        return tf.add_n([tf.reduce_max(tf.identity(v.read_value())) for v in variables])


def _bwtf_restore(sess, gathered, prefix):
    from bwtf.ckpt import commit  # pylint: disable=import-outside-toplevel
    commit.forget_verified()  # restore verifies every checksum, as a fresh process does
    return _timed(lambda: gathered.restore(sess, prefix))


def _compare_mode(tf, sess, step, variables, gathered, default, args, dirs, ps_pids):
    total = args.mib * _MIB
    results = {k: [] for k in ("bwtf_stall", "bwtf_commit", "bwtf_idle", "gather",
                               "bwtf_restore", "tf_save", "tf_restore", "raw")}
    floor = _gather_floor_op(tf, variables)
    spreads = {"bwtf": [], "tf": []}
    agree = []
    ps_before = sum(_proc_rss_mib(p) for p in ps_pids)
    for i in range(args.repeats):
        results["gather"].append(_timed(lambda: sess.run(floor)))
        # Training idle (before the updater moves the step on, so the names differ).
        _bwtf_save(tf, sess, gathered, dirs, [0.0] * len(variables))
        results["bwtf_idle"].append(gathered.last_commit_secs)
        baseline = [float(x) for x in sess.run([v[0, 0] for v in variables])]
        with _Updater(tf, sess, step, variables):  # training goes on during the saves
            prefix, stall, committed, spread, names_agree = _bwtf_save(
                tf, sess, gathered, dirs, baseline)
            tf_path = [None]
            results["tf_save"].append(_timed(lambda: tf_path.__setitem__(0, default.save(
                sess, os.path.join(dirs["tf"], "model.ckpt"), global_step=step))))
        if i == 0:
            ps_after = sum(_proc_rss_mib(p) for p in ps_pids)
        results["bwtf_stall"].append(stall)
        results["bwtf_commit"].append(committed)
        results["bwtf_restore"].append(_bwtf_restore(sess, gathered, prefix))
        spreads["bwtf"].append(spread)
        agree.append(names_agree)
        spreads["tf"].append(_spread(tf, tf_path[0], baseline)[0])
        results["tf_restore"].append(_timed(lambda: default.restore(sess, tf_path[0])))
        results["raw"].append(_raw_write_secs(dirs["raw"], total))
    print(f"variables: {args.mib} MiB on 2 ps, group bound {args.group_mib} MiB, "
          f"{args.repeats} repeats, disk {args.dir}, load average {_load_average()}")
    print(f"snapshot spread (max - min per-variable step) under a concurrent updater: "
          f"bwtf {spreads['bwtf']} (target 0), TF Saver(sharded=True) {spreads['tf']}; "
          f"bwtf name = manifest = stored global_step: {all(agree)}")
    print(f"ps memory (VmRSS of both ps): {ps_before:.0f} MiB before the first snapshot, "
          f"{ps_after:.0f} MiB after (+{ps_after - ps_before:.0f} MiB for the buffers)")
    # The machine may be shared: the median shows the typical run, the best
    # run is the least disturbed by other processes.
    for label, pick in (("median", statistics.median), ("best", min)):
        _print_figures(label, {k: pick(v) for k, v in results.items()}, args.mib)
    if any(spreads["bwtf"]) or not all(agree):
        print(f"FAILED: a bwtf checkpoint does not hold one step (spreads {spreads['bwtf']}, "
              f"name = manifest = stored global_step: {agree})")
        return 1
    return 0


def _load_average():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _print_figures(label, secs, mib):
    print(f"-- {label} --")
    for key, name in (("bwtf_stall", "bwtf stall"), ("bwtf_commit", "bwtf durable"),
                      ("bwtf_idle", "  training idle"), ("gather", "gather floor"),
                      ("bwtf_restore", "bwtf restore"), ("tf_save", "TF save (stall)"),
                      ("tf_restore", "TF restore"), ("raw", "raw write+fsync")):
        print(f"{name:16s} {secs[key]:.3f} s  ({mib / secs[key]:.0f} MiB/s)")
    print(f"ratio bwtf/TF training stall  {secs['bwtf_stall'] / secs['tf_save']:.2f}x "
          "(target <= 1.0x)")
    print(f"ratio bwtf/raw throughput     {secs['raw'] / secs['bwtf_commit']:.2f}x "
          "(durable and committed; target >= 0.8x)")
    print(f"  training idle: {secs['raw'] / secs['bwtf_idle']:.2f}x; "
          f"gather floor alone: {secs['raw'] / secs['gather']:.2f}x")
    print(f"ratio bwtf/TF restore time    {secs['bwtf_restore'] / secs['tf_restore']:.2f}x "
          "(with full verification; target <= 1.5x)")


def _parse():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of variables (multiple of 8)")
    parser.add_argument("--group_mib", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="measure chief peak RSS instead")
    parser.add_argument("--json", action="store_true", help="--memory: print JSON")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="disk to benchmark")
    parser.add_argument("--ps_task", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def main():
    args = _parse()
    if args.ps_task:
        _serve_ps()
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from bwtf import ckpt  # pylint: disable=import-outside-toplevel
    tf.compat.v1.disable_eager_execution()
    cluster = {"chief": [f"localhost:{_free_port()}"],
               "ps": [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]}
    procs = _start_ps(cluster, 2)
    root = tempfile.mkdtemp(prefix="bwtf-bench-", dir=args.dir)
    dirs = {name: os.path.join(root, name) for name in ("bwtf", "tf", "raw")}
    for d in dirs.values():
        os.makedirs(d)
    try:
        server = tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name="chief",
                                      task_index=0)
        step, variables, gathered, default = _build(tf, ckpt, args, cluster, dirs["bwtf"])
        init = tf.compat.v1.global_variables_initializer()
        with tf.compat.v1.Session(server.target) as sess:
            sess.run(init)
            if args.memory:
                _memory_mode(tf, sess, gathered, args)
            else:
                return _compare_mode(tf, sess, step, variables, gathered, default, args, dirs,
                                     [p.pid for p in procs])
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
