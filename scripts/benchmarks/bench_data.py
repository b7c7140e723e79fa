"""Benchmark: `imagenet_archive` against TFDS's own `imagenet2012` builder, same archive, same run.

    .venv/bin/python scripts/benchmarks/bench_data.py [--images=30000] [--tar_mb=150] \
        [--workers=2] [--repeats=1] [--work_dir=/tmp/bwtf-bench-data] [--keep_archive] \
        [--beam_modes=multi_processing,multi_threading,in_memory] [--competing_load]

It writes an ILSVRC2012-layout ``ILSVRC2012_img_train.tar`` from the 52 real
JPEGs in ``<repo>/../shared/data/imagenet-samples`` (each synset tar holds
about --tar_mb MB, as in real ImageNet; the images of a synset are the real
files, reused under new names), then builds it three times, each in a fresh
process: TFDS ``imagenet2012`` (the baseline), ``imagenet_archive``
sequentially, and ``imagenet_archive`` with --workers local processes (the
default engine of ``--num_workers`` without Beam options). It prints
images/s and peak RSS of each build and the ratios to the baseline.

Memory is shown two ways: the peak RSS of the build's own process, and the
peak PSS summed over the build's whole process tree (sampled every 0.1 s),
which counts the worker processes too without counting pages they share with
the main process (forked workers) more than once. The load average before
each build is printed, since the figures depend on it. The timed part is
``download_and_prepare`` only, not the imports; with --repeats the builds
alternate and each one's fastest run is shown (shared nodes are noisy).
Targets (2 cores): sequential >= 1.0x TFDS throughput, 2 workers >= 1.8x the
sequential build (2.0x is the limit) and >= 1.6x TFDS, peak memory <= 0.5x.
--competing_load runs one CPU-bound process next to every build (the
baseline's too), as on a shared node: the 2-worker build must still reach
1.6x TFDS. --beam_modes adds builds through Beam's DirectRunner (the
engine of --beam_pipeline_options) for comparison; they hold the whole split
in memory, so keep --images small with them.
"""
import argparse
import io
import json
import math
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SAMPLES = REPO_ROOT.parent / "shared" / "data" / "imagenet-samples"


def _add(tar, name, data_or_file, size):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    tar.addfile(info, data_or_file)


def write_archive(manual_dir, images, tar_mb):
    """ILSVRC2012 train and validation tars: ``images`` real JPEGs in all, 2% of them validation,
    the train images in synset tars of ~tar_mb MB."""
    samples = sorted(SAMPLES.glob("n*_*.JPEG"))
    if not samples:
        sys.exit(f"bench_data: no real JPEGs in {SAMPLES}; this benchmark needs the shared ImageNet samples")
    payloads = [p.read_bytes() for p in samples]
    validation = images // 50
    images -= validation
    average = sum(map(len, payloads)) / len(payloads)
    per_synset = max(1, round(tar_mb * 1e6 / average))
    synsets = [p.name.split("_")[0] for p in samples]
    needed = math.ceil(images / per_synset)
    if needed > len(synsets):
        sys.exit(f"bench_data: {images} images at {per_synset} per synset needs {needed} synsets, "
                 f"the samples give {len(synsets)}; raise --tar_mb or lower --images")
    manual_dir.mkdir(parents=True, exist_ok=True)
    path = manual_dir / "ILSVRC2012_img_train.tar"
    written = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as outer:
        for index, synset in enumerate(synsets[:needed]):
            count = min(per_synset, images - written)
            inner_path = manual_dir / f".{synset}.tar.partial"
            with tarfile.open(inner_path, "w", format=tarfile.USTAR_FORMAT) as inner:
                for i in range(count):
                    data = payloads[(index + i) % len(payloads)]
                    _add(inner, f"{synset}_{i}.JPEG", io.BytesIO(data), len(data))
            with open(inner_path, "rb") as inner_file:
                _add(outer, f"{synset}.tar", inner_file, inner_path.stat().st_size)
            inner_path.unlink()
            written += count
    # TFDS's imagenet2012 (4.9.4) reads the validation tar unconditionally.
    with tarfile.open(manual_dir / "ILSVRC2012_img_val.tar", "w", format=tarfile.USTAR_FORMAT) as val:
        for i in range(validation):
            data = payloads[i % len(payloads)]
            _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", io.BytesIO(data), len(data))
    return path, needed, per_synset


def _child(kind, manual_dir, data_dir, workers):
    """Runs one build in this (fresh) process and prints its figures as JSON."""
    import tensorflow_datasets as tfds

    # CPU time of the whole build (all its processes), which load from other jobs hardly changes.
    cpu_before = sum(u.ru_utime + u.ru_stime
                     for u in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))
    if kind == "tfds":
        builder = tfds.builder("imagenet2012", data_dir=data_dir)
        start = time.monotonic()
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        seconds = time.monotonic() - start
        images = sum(split.num_examples for split in builder.info.splits.values())
    else:
        from bwtf.data import build

        # "bwtf-beam-<mode>": the same build through Beam's DirectRunner in that running mode.
        beam = (f"runner=DirectRunner,direct_num_workers={workers},direct_running_mode={kind[len('bwtf-beam-'):]}"
                if kind.startswith("bwtf-beam-") else None)
        summary = build.build_dataset(manual_dir, data_dir, num_workers=workers, class_set="ilsvrc-1000",
                                      beam_pipeline_options=beam)
        seconds, images = summary.seconds, sum(summary.examples.values())
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage) - cpu_before
    print(json.dumps({"images": images, "seconds": seconds, "rss": usage[0].ru_maxrss * 1024,
                      "child_rss": usage[1].ru_maxrss * 1024, "cpu": cpu}))


def _tree(pid):
    """pid and all its descendants (from /proc; processes that end meanwhile are skipped)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            for children in pathlib.Path(f"/proc/{pids[index]}/task").glob("*/children"):
                pids.extend(int(child) for child in children.read_text().split())
        except OSError:
            pass
        index += 1
    return pids


def _tree_pss(pid):
    """Summed proportional set size (bytes) of a process tree: shared pages are split among
    their sharers, so forked workers are not counted once per process as with RSS."""
    total = 0
    for member in _tree(pid):
        try:
            for line in pathlib.Path(f"/proc/{member}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def _measure(key, kind, manual_dir, work_dir, workers, competing_load=False):
    data_dir = work_dir / f"data-{key}"
    shutil.rmtree(data_dir, ignore_errors=True)
    log = work_dir / f"{key}.log"
    load = os.getloadavg()[0]
    # A CPU-bound neighbour, as another job on a shared node would be.
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing_load else None
    try:
        return _measure_build(key, kind, manual_dir, data_dir, log, workers, load)
    finally:
        if competitor:
            competitor.kill()
            competitor.wait()


def _measure_build(key, kind, manual_dir, data_dir, log, workers, load):
    with open(log, "w") as stderr, tempfile.TemporaryFile("w+") as stdout:
        child = subprocess.Popen(
            [sys.executable, __file__, f"--_child={kind}", f"--manual_dir={manual_dir}", f"--data_dir={data_dir}",
             f"--workers={workers}"], stdout=stdout, stderr=stderr, text=True)
        peak_pss = 0
        while child.poll() is None:
            peak_pss = max(peak_pss, _tree_pss(child.pid))
            time.sleep(0.1)
        stdout.seek(0)
        output = stdout.read()
    shutil.rmtree(data_dir, ignore_errors=True)
    if child.returncode != 0:
        sys.exit(f"bench_data: the {key} build failed; see {log}")
    result = json.loads(output.strip().splitlines()[-1])
    result.update(tree_pss=peak_pss, load=load)
    print(f"  {key}: {result['images'] / result['seconds']:.0f} images/s, {result['cpu']:.1f} CPU s, peak tree PSS "
          f"{peak_pss / 2**20:.0f} MiB, load average {load:.1f}", flush=True)
    return result


def _report(results, workers, beam_modes):
    base = results["tfds"]
    rows = [("TFDS imagenet2012", "tfds"), ("bwtf sequential", "bwtf-1"),
            (f"bwtf {workers} workers", f"bwtf-{workers}")]
    rows += [(f"bwtf Beam {mode[:10]}", f"bwtf-beam-{mode}") for mode in beam_modes]
    print(f"{'build':<20}{'images':>7}{'seconds':>9}{'images/s':>9}{'CPU s':>7}{'RSS MiB':>9}{'PSS MiB':>9}"
          f"{'x img/s':>9}{'x seq':>7}{'x RSS':>7}{'x PSS':>7}{'load':>6}")
    shown = set()
    for label, key in rows:
        if key not in results or key in shown:  # with --workers=1 the parallel row is the sequential one
            continue
        shown.add(key)
        r = results[key]
        rate, base_rate = r["images"] / r["seconds"], base["images"] / base["seconds"]
        sequential = results.get("bwtf-1", r)
        versus_sequential = rate / (sequential["images"] / sequential["seconds"])
        extra = f"  (largest child process RSS {r['child_rss'] / 2**20:.0f} MiB)" if key != "tfds" else ""
        print(f"{label:<20}{r['images']:>7}{r['seconds']:>9.1f}{rate:>9.0f}{r['cpu']:>7.1f}{r['rss'] / 2**20:>9.0f}"
              f"{r['tree_pss'] / 2**20:>9.0f}{rate / base_rate:>9.2f}{versus_sequential:>7.2f}{r['rss'] / base['rss']:>7.2f}"
              f"{r['tree_pss'] / base['tree_pss']:>7.2f}{r['load']:>6.1f}{extra}")
    print("CPU s: user+system CPU seconds of all the build's processes (imports excluded); RSS: peak of the\n"
          "build's main process; PSS: peak of the summed proportional set size of the whole process tree (main\n"
          "process and workers), sampled every 0.1 s; x: ratio to TFDS; x seq: images/s ratio to bwtf sequential;\n"
          "load: 1-min load average before the build.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=30000)
    parser.add_argument("--tar_mb", type=float, default=150.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work_dir", default="/tmp/bwtf-bench-data")
    parser.add_argument("--keep_archive", action="store_true", help="reuse/keep the generated archive")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each build; the fastest is reported")
    parser.add_argument("--beam_modes", default="", help="also build through Beam's DirectRunner with --workers "
                        "workers in these direct_running_modes, e.g. multi_processing,multi_threading,in_memory")
    parser.add_argument("--competing_load", action="store_true",
                        help="run one CPU-bound process next to every build, as on a shared node")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--manual_dir", help=argparse.SUPPRESS)
    parser.add_argument("--data_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        return _child(args._child, args.manual_dir, args.data_dir, args.workers)
    work_dir = pathlib.Path(args.work_dir)
    manual_dir = work_dir / f"manual-{args.images}-{args.tar_mb:g}"
    if not (args.keep_archive and (manual_dir / "ILSVRC2012_img_train.tar").exists()):
        shutil.rmtree(manual_dir, ignore_errors=True)
        start = time.monotonic()
        path, synsets, per_synset = write_archive(manual_dir, args.images, args.tar_mb)
        print(f"archive: {path} ({path.stat().st_size / 1e9:.2f} GB, {synsets} synset tars of {per_synset} "
              f"images, ~{args.tar_mb:g} MB each) written in {time.monotonic() - start:.0f} s", flush=True)
    results = {}
    beam_modes = [mode for mode in args.beam_modes.split(",") if mode]
    runs = [("tfds", "tfds", 1), ("bwtf-1", "bwtf", 1), (f"bwtf-{args.workers}", "bwtf", args.workers)]
    runs += [(f"bwtf-beam-{mode}", f"bwtf-beam-{mode}", args.workers) for mode in beam_modes]
    for repeat in range(args.repeats):
        # The builds alternate, so that load from other jobs on a shared node
        # hits each of them alike; the fastest run of each is kept.
        for key, kind, workers in runs if repeat % 2 == 0 else runs[::-1]:
            if key in results and len(results[key]) > repeat:  # --workers=1: the same build as bwtf-1
                continue
            print(f"run {repeat + 1}/{args.repeats}: building with {key} ...", flush=True)
            results.setdefault(key, []).append(_measure(key, kind, manual_dir, work_dir, workers, args.competing_load))
    results = {key: min(runs_of_key, key=lambda r: r["seconds"] / r["images"]) for key, runs_of_key in results.items()}
    _report(results, args.workers, beam_modes)
    if not args.keep_archive:
        shutil.rmtree(manual_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
