"""Builds the splits with N local processes and writes exactly the shards TFDS's sequential writer writes.

Why not Beam on one node: TFDS's BeamWriter shuffles with a GroupByKey, and
Beam's local runners (DirectRunner/FnApiRunner) route every serialized example
through their single controller process over gRPC and hold the grouped data in
its memory; on 2 cores that made a 2-worker build ~9x slower than the
sequential one and 3x larger in memory. Beam remains the engine for several
nodes (``--beam_pipeline_options``); this module is the fast one-node engine.

How: a map phase and a reduce phase, both spread over a process pool.
* map: each work item's examples are encoded, serialized and hashed in a
  worker, exactly as ``tfds.core.writer.Writer`` does, and appended to a run
  file of this item, grouped by the shuffler's 1000 hash buckets. A run is cut
  every ``_RUN_BYTES``, so memory does not grow with a synset tar.
* reduce: TFDS's own shard boundaries are computed from the bucket counts;
  each worker writes whole shards, reading (and sorting) only the buckets that
  shard covers. Keys, order and shard contents are those of a sequential
  build, so both engines give byte-identical files.
The run files live in ``_parallel_runs`` inside TFDS's incomplete dataset
folder (TFDS's own sequential shuffler also spills there), need about the
dataset's size in disk space, and go when the build ends, failed or not.
Workers are forked, so they share this process's imported modules.

Deliberately left out: remote data_dirs (the runs are read and written with
plain file I/O) and ``max_examples_per_split``; both are for the sequential
or Beam engines.
"""
from concurrent import futures
import contextlib
import ctypes
import dataclasses
import math
import multiprocessing
import os
import shutil
import signal
import struct
import typing

import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer
from tensorflow_datasets.core import file_adapters
from tensorflow_datasets.core import hashing
from tensorflow_datasets.core import shuffle
from tensorflow_datasets.core import writer as tfds_writer

import bwtf
from bwtf.data.imagenet_archive import _examples

_BUCKETS = shuffle.BUCKETS_NUMBER
_RECORD_HEADER = struct.Struct(">16sQ")  # 128-bit hashed key, record length
_RUN_BYTES = 32 << 20  # serialized examples a worker holds before writing a run
# A synset tar is split into tasks of about this many bytes, so that two
# workers stay busy to the end even when one of them is slowed by another
# job (a whole ~150 MB synset tar per task left one worker idle at the end).
PART_BYTES = 24 << 20
_worker = {}  # per-process state set by _init_worker


class DuplicateKeyError(RuntimeError):
    """Two images of one split produce the same example key."""


class WorkerError(bwtf.UserError, RuntimeError):
    """A worker process ended without finishing its task."""


class _Segment(typing.NamedTuple):
    """The records of one bucket inside a run file (a tuple: a full ImageNet build holds ~10^6 of them)."""

    path: str
    offset: int
    size: int
    count: int


def _die_with_parent(parent_pid):
    """Makes the kernel kill this worker when the building process dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)  # pylint: disable=protected-access


def worker_count(requested, num_items):
    """Processes worth starting: no more than the work items, nor the CPUs this process may use."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(requested, num_items, cpus))


def _init_worker(parent_pid, features, report_dir, scratch_dir):
    _die_with_parent(parent_pid)
    # A SIGTERM or Ctrl-C is the parent's to handle: it stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker.update(features=features, report_dir=report_dir, scratch_dir=scratch_dir,
                   serializer=example_serializer.ExampleSerializer(features.get_serialized_info()))


def _write_run(path, buckets):
    """Appends the buffered buckets to ``path``; returns {bucket: _Segment}."""
    segments = {}
    with open(path, "ab") as run:
        for bucket in sorted(buckets):
            offset = run.tell()
            records = buckets[bucket]
            run.writelines(records)
            segments[bucket] = _Segment(path, offset, run.tell() - offset, len(records))
    return segments


def _map_item(task):
    """Encodes, serializes and buckets one item's examples; returns (split, [{bucket: _Segment}], bytes)."""
    split, item = task
    hasher, serializer, features = hashing.Hasher(split), _worker["serializer"], _worker["features"]
    path = os.path.join(_worker["scratch_dir"], f"{split}-{item.index:06d}.run")
    runs, buckets, buffered, total = [], {}, 0, 0
    for key, example in _examples.examples_of_item(item, _worker["report_dir"]):
        data = serializer.serialize_example(features.encode_example(example))
        hkey = hasher.hash_key(key)
        bucket = shuffle.get_bucket_number(hkey=hkey, num_buckets=_BUCKETS)
        buckets.setdefault(bucket, []).append(_RECORD_HEADER.pack(hkey.to_bytes(16, "big"), len(data)) + data)
        buffered += len(data)
        total += len(data)
        if buffered >= _RUN_BYTES:
            runs.append(_write_run(path, buckets))
            buckets, buffered = {}, 0
    if buckets:
        runs.append(_write_run(path, buckets))
    return split, runs, total


def _read_bucket(segments, open_runs):
    """The (hkey, data) records of one bucket, sorted as TFDS's shuffler sorts them.

    ``open_runs`` ({path: file}) keeps the run files open across the buckets of a shard.
    """
    records = []
    for segment in segments:
        if segment.path not in open_runs:
            open_runs[segment.path] = open(segment.path, "rb")  # pylint: disable=consider-using-with
        run = open_runs[segment.path]
        run.seek(segment.offset)
        block = run.read(segment.size)
        position = 0
        while position < len(block):
            hkey, length = _RECORD_HEADER.unpack_from(block, position)
            position += _RECORD_HEADER.size
            records.append((int.from_bytes(hkey, "big"), block[position : position + length]))
            position += length
    records.sort()
    for first, second in zip(records, records[1:]):
        if first[0] == second[0]:
            raise DuplicateKeyError("two images of one split have the same key (synset/file name); "
                                    "remove the duplicate file from the archive")
    return records


def _write_shard(task):
    """Writes one final shard from the buckets its file instructions name; returns its path."""
    spec, segments_of_bucket, file_format = task

    def records(open_runs):
        for instruction in spec.file_instructions:
            bucket = _read_bucket(segments_of_bucket[int(instruction.filename)], open_runs)
            yield from bucket[instruction.skip : instruction.skip + instruction.take]

    open_runs = {}
    try:
        record_keys = file_adapters.ADAPTER_FOR_FORMAT[file_format].write_examples(spec.path, records(open_runs))
    finally:
        for run in open_runs.values():
            run.close()
    if record_keys:  # formats with random access get an index file, as in a sequential build
        tfds_writer._write_index_file(spec.index_path, list(record_keys))  # pylint: disable=protected-access
    return spec.path


@dataclasses.dataclass
class _SplitRuns:
    segments: list = dataclasses.field(default_factory=lambda: [[] for _ in range(_BUCKETS)])
    size: int = 0

    def add(self, runs, size):
        for run in runs:
            for bucket, segment in run.items():
                self.segments[bucket].append(segment)
        self.size += size

    def bucket_lengths(self):
        return [sum(segment.count for segment in segments) for segments in self.segments]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and how the splits are written (from the builder)."""

    features: object  # the builder's FeaturesDict, with its label names set
    templates: dict  # split -> naming.ShardedFileTemplate
    file_format: object
    shard_config: object
    report_dir: str
    scratch_dir: str


def _run_all(pool, function, tasks, description, unit):
    """Yields function(task) for every task as the workers finish them, with a progress bar."""
    submitted = [pool.submit(function, task) for task in tasks]
    progress = tfds.core.utils.tqdm(total=len(tasks), desc=description, unit=unit, leave=False)
    try:
        with progress:
            for done in futures.as_completed(submitted):
                progress.update(1)
                yield done.result()
    except futures.process.BrokenProcessPool:
        raise WorkerError("a build worker process died (killed by a signal, or out of memory?); nothing was "
                          "written. Rerun with fewer --num_workers or more memory") from None
    finally:
        for future in submitted:  # after a failure, the queued tasks are not worth running
            future.cancel()


def _map_phase(pool, items_of_split):
    """Runs every item of every split; returns {split: _SplitRuns}."""
    tasks = sorted(((split, item) for split, items in items_of_split.items() for item in items),
                   key=lambda task: -getattr(task[1], "size", 0))  # the largest synset tars first
    runs = {split: _SplitRuns() for split in items_of_split}
    for split, item_runs, size in _run_all(pool, _map_item, tasks, "Reading and encoding items", " items"):
        runs[split].add(item_runs, size)
    return runs


def _reduce_phase(pool, runs, target):
    """Writes every shard of every split; returns [tfds.core.SplitInfo]."""
    tasks, split_infos = [], []
    for split, split_runs in runs.items():
        lengths = split_runs.bucket_lengths()
        # TFDS's own boundaries, so that the shards match a sequential build's.
        specs = tfds_writer._get_shard_specs(  # pylint: disable=protected-access
            sum(lengths), split_runs.size, lengths, target.templates[split], target.shard_config)
        for spec in specs:
            needed = {int(i.filename): split_runs.segments[int(i.filename)] for i in spec.file_instructions}
            tasks.append((spec, needed, target.file_format))
        split_infos.append(tfds.core.SplitInfo(
            name=split, shard_lengths=[int(spec.examples_number) for spec in specs], num_bytes=split_runs.size,
            filename_template=target.templates[split]))
    for _ in _run_all(pool, _write_shard, tasks, "Writing shards", " shards"):
        pass
    return split_infos


def split_items(items_of_split):
    """{split: items} with each synset tar item cut into parts of ~PART_BYTES, indexes renumbered.

    The parts of one class select exactly the images the whole item would
    (see _examples._part_of), so the examples and shards do not change.
    """
    result = {}
    for split, items in items_of_split.items():
        parts = []
        for item in items:
            count = max(1, math.ceil(item.size / PART_BYTES)) if isinstance(item, _examples.ClassItem) else 1
            parts += [dataclasses.replace(item, part=(k, count)) if count > 1 else item for k in range(count)]
        result[split] = [dataclasses.replace(item, index=index) for index, item in enumerate(parts)]
    return result


def write_splits(items_of_split, target, num_workers):
    """Builds every split of ``items_of_split`` ({split: items}) with ``num_workers`` processes.

    Returns the tfds.core.SplitInfo of each split, in the order given. On any
    failure or interruption (SIGTERM is turned into one by bwtf.data.build)
    the workers are killed at once and the run files removed; a worker also
    dies when this process is killed outright.
    """
    items_of_split = split_items(items_of_split)
    os.makedirs(target.scratch_dir, exist_ok=True)
    # fork: the workers inherit the imported modules and the features instead
    # of importing TensorFlow again (seconds per worker on a loaded node), and
    # share those pages with this process.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context(method),
                                       initializer=_init_worker,
                                       initargs=(os.getpid(), target.features, target.report_dir, target.scratch_dir))
    try:
        runs = _map_phase(pool, items_of_split)
        split_infos = _reduce_phase(pool, runs, target)
    except BaseException:
        _kill_workers(pool)
        raise
    else:
        pool.shutdown(wait=True)
    finally:
        shutil.rmtree(target.scratch_dir, ignore_errors=True)
    return split_infos


def _kill_workers(pool):
    """Stops a pool now: its workers are killed, not waited for (a task can take minutes)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            process.join(timeout=10)
