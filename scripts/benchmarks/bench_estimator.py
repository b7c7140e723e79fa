"""Benchmarks of the training program, each against a baseline measured in the same run.

    .venv/bin/python scripts/benchmarks/bench_estimator.py [--parts=a,b,c,r,x] [--rounds=7]
        [--steps=150] [--accuracy_steps=500] [--work_dir=/tmp/bwtf-bench-estimator]

(a) and (b) run the baseline and bwtf alternately, the first of each pair
swapping every round, and print for each and for their per-round ratio the
median, the spread (min-max) and the middle half: on a shared machine one run
proves nothing, the median of ratios measured moments apart does. (a)
alternates single passes over the samples (``--rounds`` x ``--repeats`` of
them), (b) whole training runs (``--rounds``). Both count CPU seconds of this
process, so other processes' load enters only through caches and frequency.

(a) Input pipeline: bwtf's training preprocessing (decode_and_crop_jpeg with a
    sampled box, flip, resize to 224) on the real JPEGs in
    ``<repo>/../shared/data/imagenet-samples``, one thread, in images per CPU
    second of the process (images/s per core); baseline: ``tf.io.decode_jpeg`` of
    the whole image plus a resize of the same bytes. Target >= 1.0x.
(b) Training-loop overhead: ``tf.estimator.Estimator.train`` steps per CPU
    second against a bare ``tf.compat.v1.Session`` loop running the same
    ``model_fn`` graph on the same synthetic batches (small_cnn, 64px, batch
    64), after a warm-up. Target >= 0.95x. The wall-clock ratio is printed too.
(r) bwtf's runner (``bwtf.estimator.runner``): ``Runner.train`` steps per CPU
    second against ``tf.estimator.Estimator.train`` on the same model_fn and
    batches as (b) (where tf.estimator is missing, TensorFlow 2.16+, against
    the bare loop instead). Target >= 0.95x. Not in the default --parts.
(x) Across versions: bwtf's runner on TensorFlow 2.21 (``--tf221_python``)
    against ``tf.estimator.Estimator.train`` on this interpreter's 2.15, same
    model_fn and batches as (b); each round runs each loop in a process of its
    own (one loop per process: ``--one_loop``), alternating. Target >= 0.95x.
    Not in the default --parts.
(c) Accuracy table on the digits sample archive (built into --work_dir):
    precision@1 on the validation split against global step and wall time, for
    1 worker, 2 asynchronous workers + 1 ps, and 2 collective workers. Each
    committed checkpoint (every 100 steps) is evaluated after the run; the
    wall time is when the checkpoint was committed, from the first task's start.
"""
import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT.parent / "shared" / "data" / "imagenet-samples"


def _rounds_summary(name, values, unit):
    """One line: the median of the rounds, their spread (min-max, and the middle half)
    and, for up to 10 rounds, every round."""
    low, high = min(values), max(values)
    quartiles = statistics.quantiles(values, n=4) if len(values) >= 4 else [low, None, high]
    middle = f"middle half {quartiles[0]:.3f}-{quartiles[2]:.3f}" if unit == "x" else \
        f"middle half {quartiles[0]:.1f}-{quartiles[2]:.1f}"
    rounds = ""
    if len(values) <= 10:
        rounds = " (rounds: " + ", ".join(f"{v:.{3 if unit == 'x' else 1}f}" for v in values) + ")"
    if unit == "x":
        return f"    {name}: median {statistics.median(values):.3f}x, spread {low:.3f}-{high:.3f}x, {middle}{rounds}"
    return (f"    {name}: median {statistics.median(values):8.1f} {unit}, spread {low:.1f}-{high:.1f}, "
            f"{middle}{rounds}")


def _alternating_rounds(rounds, baseline, candidate):
    """Runs baseline and candidate alternately, the first of each pair swapping every round.

    Returns (baseline rates, candidate rates, per-round ratios). A ratio within
    one round compares two runs seconds apart, so slow drifts of the machine's
    load cancel in it; the median of the ratios ignores a round that a burst
    of other work hit.
    """
    base_rates, candidate_rates = [], []
    for index in range(rounds):
        if index % 2:
            candidate_rates.append(candidate())
            base_rates.append(baseline())
        else:
            base_rates.append(baseline())
            candidate_rates.append(candidate())
    ratios = [c / b for b, c in zip(base_rates, candidate_rates)]
    return base_rates, candidate_rates, ratios


def _single_thread_passes(tf, encoded, preprocess):
    """An endless iterator over ``encoded``, preprocessed on one thread, warmed up."""
    dataset = tf.data.Dataset.from_tensor_slices(encoded).repeat().map(preprocess)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    # No prefetching: a pipeline must not work ahead while the other one is timed.
    options.autotune.enabled = False
    options.experimental_optimization.inject_prefetch = False
    iterator = iter(dataset.with_options(options))
    for _ in range(len(encoded)):  # Warm-up: tracing and the first decodes.
        next(iterator)
    return iterator


def _pass_rate(iterator, count):
    """Images per CPU second of this process over the next ``count`` images.

    CPU seconds, not wall time: "per core" is then exact, and other processes
    on a shared machine enter only through caches and clock frequency.
    """
    start = time.process_time()
    for _ in range(count):
        next(iterator)
    return count / (time.process_time() - start)


def bench_input_pipeline(repeats, rounds):
    import tensorflow as tf

    from bwtf.estimator import inputs

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    encoded = [path.read_bytes() for path in sorted(SAMPLES.glob("*.JPEG"))]
    size = 224

    def plain(data):
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.resize(image, [size, size])

    def fused(data):
        return inputs.train_image_from_bytes(data, size)

    # Both pipelines stay open and take turns pass by pass (one pass: every
    # sample once), so a burst of other load hits both alike.
    baseline_passes = _single_thread_passes(tf, encoded, plain)
    bwtf_passes = _single_thread_passes(tf, encoded, fused)
    passes = rounds * repeats
    base, bwtf, ratios = _alternating_rounds(
        passes, lambda: _pass_rate(baseline_passes, len(encoded)), lambda: _pass_rate(bwtf_passes, len(encoded)))
    print(f"(a) input pipeline, {len(encoded)} real JPEGs, 1 core, {size}px, {passes} alternating passes "
          f"over the samples, images per CPU second:")
    print(_rounds_summary("decode_jpeg + resize (baseline)", base, "images/s"))
    print(_rounds_summary("bwtf train preprocessing       ", bwtf, "images/s"))
    print(_rounds_summary("ratio (target >= 1.0x)", ratios, "x"))


_WARMUP_STEPS = 20


def _cpu_rate(cpu_stamps):
    """Steps per CPU second of this process after the warm-up (all its threads)."""
    stamps = cpu_stamps[_WARMUP_STEPS:]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _wall_rate(stamps):
    stamps = stamps[_WARMUP_STEPS:]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def _stamping_hook(tf, stamps, cpu_stamps):
    class Hook(tf.compat.v1.train.SessionRunHook):
        def after_run(self, run_context, run_values):
            stamps.append(time.perf_counter())
            cpu_stamps.append(time.process_time())

    return Hook()


def _loop_configs(steps, model_dir):
    from bwtf import ckpt
    from bwtf.estimator import config

    policy = ckpt.CheckpointPolicy(save_steps=10 ** 9, keep_last=1)
    train_config = config.TrainConfig(
        model=config.ModelConfig("small_cnn", 10, 64), batch_size=64, train_steps=steps,
        model_dir=str(model_dir), checkpoint_policy=policy, log_every_steps=100)
    data = config.DatasetConfig(image_size=64, num_classes=10, use_synthetic_data=True)
    return train_config, data


def _bare_loop(tf, steps, train_config, data):
    from bwtf.estimator import inputs, model_fn

    from bwtf.estimator.runner import spec as spec_types

    mode = spec_types.ModeKeys.TRAIN
    stamps, cpu_stamps = [], []
    with tf.Graph().as_default():
        features, labels = tf.compat.v1.data.make_one_shot_iterator(
            inputs.synthetic_input_fn(data, mode, 64)).get_next()
        spec = model_fn.model_fn(features, labels, mode, train_config)
        with tf.compat.v1.Session() as session:
            session.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])
            for _ in range(steps):
                session.run(spec.train_op)
                stamps.append(time.perf_counter())
                cpu_stamps.append(time.process_time())
    return _cpu_rate(cpu_stamps), _wall_rate(stamps)


def _estimator_loop(tf, steps, train_config, data):
    from bwtf.estimator import inputs, model_fn

    stamps, cpu_stamps = [], []
    run_config = tf.estimator.RunConfig(model_dir=train_config.model_dir, save_checkpoints_steps=None,
                                        save_checkpoints_secs=None, save_summary_steps=100,
                                        log_step_count_steps=100)
    estimator = tf.estimator.Estimator(model_fn.model_fn, config=run_config, params=train_config)
    estimator.train(inputs.make_input_fn(data, tf.estimator.ModeKeys.TRAIN, 64), max_steps=steps,
                    hooks=[_stamping_hook(tf, stamps, cpu_stamps)])
    return _cpu_rate(cpu_stamps), _wall_rate(stamps)


def _runner_loop(tf, steps, train_config, data):
    from bwtf.estimator import inputs, model_fn
    from bwtf.estimator.runner import engine, spec

    stamps, cpu_stamps = [], []
    run_config = engine.RunConfig(model_dir=train_config.model_dir, save_summary_steps=100, log_step_count_steps=100)
    runner = engine.Runner(model_fn.model_fn, run_config, params=train_config)
    runner.train(inputs.make_input_fn(data, spec.ModeKeys.TRAIN, 64), max_steps=steps,
                 hooks=[_stamping_hook(tf, stamps, cpu_stamps)])
    return _cpu_rate(cpu_stamps), _wall_rate(stamps)


def _compare_loops(tf, steps, work_dir, rounds, baseline, candidate):
    """Alternating rounds of two training loops ``(label, loop)``, each in a fresh model_dir
    (an Estimator must not resume a finished run); prints steps per CPU second and the ratios."""
    wall = {"baseline": [], "candidate": []}
    counter = iter(range(10 ** 6))

    def run(kind, loop):
        train_config, data = _loop_configs(steps, work_dir / f"{kind}-{next(counter)}")
        cpu_rate, wall_rate = loop(tf, steps, train_config, data)
        wall[kind].append(wall_rate)
        return cpu_rate

    base, other, ratios = _alternating_rounds(
        rounds, lambda: run("baseline", baseline[1]), lambda: run("candidate", candidate[1]))
    wall_ratios = [c / b for b, c in zip(wall["baseline"], wall["candidate"])]
    print(_rounds_summary(baseline[0], base, "steps/s"))
    print(_rounds_summary(candidate[0], other, "steps/s"))
    print(_rounds_summary("ratio (target >= 0.95x)", ratios, "x"))
    print(_rounds_summary("wall-clock ratio (load-sensitive)", wall_ratios, "x"))


_LOOPS = {"bare": _bare_loop, "estimator": _estimator_loop, "runner": _runner_loop}


def _loop_in_process(python, name, steps, work_dir):
    """Runs one training loop in a new ``python`` process (this script, --one_loop); its steps per CPU second."""
    result = subprocess.run(
        [python, __file__, f"--one_loop={name}", f"--steps={steps}", f"--work_dir={work_dir}"],
        capture_output=True, text=True, check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if result.returncode != 0:
        raise SystemExit(f"{python} --one_loop={name} failed:\n{result.stderr[-2000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    return record["cpu_rate"], record["version"]


def bench_across_versions(steps, work_dir, rounds, tf221_python):
    """(x) the runner on TensorFlow 2.21 against tf.estimator on this interpreter's 2.15."""
    counter = iter(range(10 ** 6))
    versions = {}

    def run(python, name):
        rate, versions[name] = _loop_in_process(python, name, steps, work_dir / f"{name}-{next(counter)}")
        return rate

    base, other, ratios = _alternating_rounds(
        rounds, lambda: run(sys.executable, "estimator"), lambda: run(tf221_python, "runner"))
    print(f"(x) small_cnn 64px batch 64, synthetic data, {steps} steps per round ({_WARMUP_STEPS} warm-up), "
          f"{rounds} alternating rounds, one process per loop, steps per CPU second of that process:")
    print(_rounds_summary(f"tf.estimator on TensorFlow {versions['estimator']} (baseline)", base, "steps/s"))
    print(_rounds_summary(f"bwtf's runner on TensorFlow {versions['runner']}       ", other, "steps/s"))
    print(_rounds_summary("ratio (target >= 0.95x)", ratios, "x"))


def _one_loop(name, steps, work_dir):
    import tensorflow as tf

    train_config, data = _loop_configs(steps, work_dir)
    cpu_rate, wall_rate = _LOOPS[name](tf, steps, train_config, data)
    print(json.dumps({"cpu_rate": cpu_rate, "wall_rate": wall_rate, "version": tf.__version__}))


def bench_runner(steps, work_dir, rounds):
    """(r) bwtf's runner against tf.estimator.Estimator.train (or, without tf.estimator, the bare loop)."""
    import tensorflow as tf

    from bwtf.estimator.runner import spec

    baseline = (("tf.estimator.Estimator.train (baseline) ", _estimator_loop) if spec.HAS_TF_ESTIMATOR
                else ("bare tf.compat.v1.Session loop (baseline)", _bare_loop))
    print(f"(r) bwtf's runner on TensorFlow {tf.__version__}, small_cnn 64px batch 64, synthetic data, {steps} "
          f"steps per round ({_WARMUP_STEPS} warm-up), {rounds} alternating rounds, steps per CPU second:")
    _compare_loops(tf, steps, work_dir, rounds, baseline,
                   ("bwtf.estimator.runner Runner.train       ", _runner_loop))


def bench_loop_overhead(steps, work_dir, rounds):
    import tensorflow as tf

    print(f"(b) training loop, small_cnn 64px batch 64, synthetic data, {steps} steps per round "
          f"({_WARMUP_STEPS} warm-up), {rounds} alternating rounds, steps per CPU second of the process:")
    _compare_loops(tf, steps, work_dir, rounds, ("bare tf.compat.v1.Session loop (baseline)", _bare_loop),
                   ("tf.estimator.Estimator.train            ", _estimator_loop))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _digits(work_dir):
    from bwtf.data import build, sample_archive

    tfds_dir = work_dir / "digits" / "tfds"
    if not tfds_dir.exists():
        manual = sample_archive.write_sample_archive(work_dir / "digits" / "manual", layout="ilsvrc2012")
        build.build_dataset(manual, tfds_dir, class_set="present")
    return str(tfds_dir), "imagenet_archive/present"


def _launch(tasks, log_dir):
    """tasks: [(name, argv, tf_config or None)]; waits for all, returns exit codes."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    processes = []
    for name, argv, tf_config in tasks:
        task_env = dict(env, **({"TF_CONFIG": tf_config} if tf_config else {}))
        log = open(log_dir / f"{name}.log", "w")
        processes.append((name, subprocess.Popen([sys.executable, "-m", "bwtf.estimator.train", *argv],
                                                 stdout=log, stderr=subprocess.STDOUT, env=task_env)))
    return {name: process.wait() for name, process in processes}


def _setups(common):
    ps, chief, worker = (f"localhost:{p}" for p in _free_ports(3))
    hosts = [f"--worker_hosts={chief},{worker}"]
    return {
        "1 worker": [("chief", [*common, "--distribution=none"], None)],
        "2 async workers + 1 ps": [
            ("ps", [*common, *hosts, f"--ps_hosts={ps}", "--job_name=ps", "--task_index=0"], None),
            ("worker", [*common, *hosts, f"--ps_hosts={ps}", "--job_name=worker", "--task_index=1"], None),
            ("chief", [*common, *hosts, f"--ps_hosts={ps}", "--job_name=worker", "--task_index=0"], None)],
        "2 collective workers": [
            ("worker", [*common, "--distribution=collective"], json.dumps(
                {"cluster": {"chief": [chief], "worker": [worker]}, "task": {"type": "worker", "index": 0}})),
            ("chief", [*common, "--distribution=collective"], json.dumps(
                {"cluster": {"chief": [chief], "worker": [worker]}, "task": {"type": "chief", "index": 0}}))],
    }


def _evaluate_checkpoints(model_dir, data_dir, dataset):
    import tensorflow as tf

    from bwtf import ckpt
    from bwtf.estimator import config, inputs, model_fn

    data = config.DatasetConfig(name=dataset, data_dir=data_dir, image_size=32)
    train_config = config.TrainConfig(model=config.ModelConfig("small_cnn", 10, 32), model_dir=model_dir)
    estimator = tf.estimator.Estimator(model_fn.model_fn, model_dir=model_dir, params=train_config)
    eval_fn = inputs.make_input_fn(data, tf.estimator.ModeKeys.EVAL, 128)
    rows = []
    for status in ckpt.list_checkpoints(model_dir):
        if status.intact:
            path = os.path.join(status.directory, f"model.ckpt-{status.step}")
            metrics = estimator.evaluate(eval_fn, checkpoint_path=path)
            rows.append((status.step, status.created, metrics["precision_at_1"]))
    return rows


def bench_accuracy(steps, work_dir):
    data_dir, dataset = _digits(work_dir)
    table = []
    for label, tasks in _setups([]).items():
        model_dir = work_dir / label.replace(" ", "_").replace("+", "")
        common = ["--model=small_cnn", f"--dataset={dataset}", f"--data_dir={data_dir}", "--image_size=32",
                  "--batch_size=32", "--base_lr=0.4", "--warmup_steps=20", "--min_crop_area=0.5",
                  "--shuffle_buffer=2000", f"--train_steps={steps}", "--save_checkpoints_steps=100",
                  "--keep_checkpoints=100", "--log_every_steps=100", f"--model_dir={model_dir}"]
        tasks = [(name, [*common, *argv[0:]], tf_config) for name, argv, tf_config in _setups(common)[label]]
        log_dir = work_dir / "logs" / model_dir.name
        log_dir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        codes = _launch(tasks, log_dir)
        wall = time.time() - start
        rows = _evaluate_checkpoints(str(model_dir), data_dir, dataset)
        table.append((label, codes, wall, [(step, created - start, p1) for step, created, p1 in rows]))
    print(f"(c) precision@1 on the digits validation split, small_cnn 32px, batch 32 per worker, {steps} steps:")
    for label, codes, wall, rows in table:
        print(f"    {label}: exit codes {codes}, total wall {wall:.1f} s (incl. process start)")
        for step, seconds, p1 in rows:
            print(f"        step {step:5d}  t={seconds:6.1f} s  precision@1 {p1:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="a,b,c")
    parser.add_argument("--steps", type=int, default=150, help="(b), (r) steps per round")
    parser.add_argument("--accuracy_steps", type=int, default=500, help="(c) steps per setup")
    parser.add_argument("--repeats", type=int, default=5, help="(a) passes per round: (a) alternates "
                        "--rounds x --repeats passes over the sample JPEGs")
    parser.add_argument("--rounds", type=int, default=7, help="(a), (b), (r) alternating rounds")
    parser.add_argument("--work_dir", default="/tmp/bwtf-bench-estimator")
    parser.add_argument("--tf221_python", default=".venv-tf221/bin/python", help="(x) a python with TensorFlow 2.21")
    parser.add_argument("--one_loop", choices=sorted(_LOOPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work_dir = pathlib.Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if args.one_loop:
        _one_loop(args.one_loop, args.steps, work_dir)
        return
    parts = set(args.parts.split(","))
    if "a" in parts:
        bench_input_pipeline(args.repeats, args.rounds)
    if "b" in parts:
        bench_loop_overhead(args.steps, work_dir / f"b-{os.getpid()}", args.rounds)
    if "r" in parts:
        bench_runner(args.steps, work_dir / f"r-{os.getpid()}", args.rounds)
    if "x" in parts:
        bench_across_versions(args.steps, work_dir / f"x-{os.getpid()}", args.rounds, args.tf221_python)
    if "c" in parts:
        bench_accuracy(args.accuracy_steps, work_dir / f"c-{os.getpid()}")


if __name__ == "__main__":
    main()
