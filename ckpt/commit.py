"""The atomic commit protocol for ``<model_dir>/ckpt-<N>/`` and its readers.

Writing (PendingCheckpoint, only on the chief):
  1. files of step N go to ``<model_dir>/.tmp-ckpt-<N>-<uuid>/``, which holds
     ``.writer.json`` (host, pid) from the start so leftovers can be judged;
  2. each file is fsynced, then the directory; a file the writer declares
     finished early (``seal``) is fsynced and checksummed in the background
     while the next ones are still being written;
  3. MANIFEST.json is written last: files, sizes, checksums (CRC32C, or
     zlib's CRC32 without google-crc32c; the manifest names which), step,
     variables and shapes, format version and writer;
  4. the directory is renamed to ``ckpt-<N>``: rename is atomic on POSIX and
     Lustre, so ``ckpt-<N>`` either does not exist or is complete;
  5. LATEST and TF's ``checkpoint`` state file are replaced atomically.
On object stores (gs://, memory://) rename is not atomic, and the
checkpoint goes to its final objects in ``ckpt-<N>/`` as it is written: each
data file the writer seals (one per group the saver gathers) is checksummed,
uploaded to its final name and emptied locally (``stream``), so the local
staging directory only ever holds the groups in flight, the index and the
manifest, never the whole checkpoint. Before the first upload an existing
``ckpt-<N>`` is judged (an intact one is kept and this save dropped; a broken
one removed, after a fencing check), and the writer's ownership is checked
before every upload. Once the groups are merged the index goes up, then the
manifest, then the COMMITTED marker (naming the manifest's digest and the
writer) last: a directory without the marker is uncommitted, whatever else
it holds. An aborted save removes the objects it uploaded (unless it was
fenced: then it deletes nothing, and they stay unmarked, never trusted).

Reading: a checkpoint is intact when its manifest (and marker) is present,
well formed, ours, for the right step, and every listed file has the listed
size (and, in a full check, checksum). Format version 1 manifests (CRC32
only, no ``checksum`` entry) are still read. Readers take the newest intact one and
log which newer ones they skipped and why.

This module does not know TensorFlow: the saver hands it a staging prefix and
the variable list. Retention is in retention.py.
"""
import collections
from concurrent import futures
import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid

from absl import logging as log

from bwtf.ckpt import _failpoints
from bwtf.ckpt import _identity
from bwtf.ckpt import errors
from bwtf.ckpt import fence
from bwtf.ckpt import storage as storage_lib

MANIFEST = "MANIFEST.json"
MARKER = "COMMITTED"
WRITER = ".writer.json"
POINTER = "LATEST"
STATE_FILE = "checkpoint"
FORMAT = "bwtf-ckpt"
FORMAT_VERSION = 2
# Version 1 had no "checksum" entry: its per-file checksums are zlib CRC32s.
_V1_CHECKSUM = "crc32"
# Background threads for sealed files: fsyncs wait on the disk, checksums on
# the CPU, so a few run at once.
_SEAL_THREADS = 3

_DIR_RE = re.compile(r"^ckpt-(0|[1-9][0-9]*)$")
# What a user may take for a checkpoint name (ckpt-009): listed, never used.
_LOOSE_DIR_RE = re.compile(r"^ckpt-([0-9]+)$")
TMP_DIR_RE = re.compile(r"^\.tmp-ckpt-(\d+)-([0-9a-f]+)$")


@dataclasses.dataclass(frozen=True)
class CheckpointRef:
    """A committed checkpoint: ``path`` is the TF prefix (for load_checkpoint)."""

    path: str
    step: int
    directory: str


@dataclasses.dataclass(frozen=True)
class CheckpointStatus:
    """One ``ckpt-<N>`` directory as a reader sees it."""

    directory: str
    step: int
    intact: bool
    reason: str = ""
    size_bytes: int = 0
    created: float = 0.0
    # Not a checkpoint bwtf wrote (a symbolic link, a non-canonical name):
    # listed as broken, never used and never deleted.
    foreign: bool = False


def prefix_name(step):
    return f"model.ckpt-{step}"


def as_storage(model_dir):
    return model_dir if isinstance(model_dir, storage_lib.Storage) else storage_lib.Storage(model_dir)


def step_of(name):
    """The step of a ``ckpt-<N>`` directory name, or None for other names."""
    match = _DIR_RE.match(name)
    return int(match.group(1)) if match else None


def _ref(store, step):
    directory = store.path(f"ckpt-{step}")
    return CheckpointRef(path=store.display(f"{directory}/{prefix_name(step)}"),
                         step=step, directory=store.display(directory))


class PendingCheckpoint:
    """A checkpoint of one step being written: a staging dir and its final place.

    ``prefix`` is a local path prefix for TF to write to. Only ``finalize``
    makes the checkpoint visible to readers; ``abort`` (or a crash) leaves
    nothing a reader would trust. ``expected_bytes``: the most bytes the
    local staging directory of an object-store checkpoint holds at once (the
    saver passes its groups in flight plus the index); checked up front.
    """

    def __init__(self, model_dir, step, ownership=None, staging_root=None, expected_bytes=0):
        _failpoints.check_config()
        self.store = as_storage(model_dir)
        # A writer without an explicit claim takes ownership at its first save.
        self.ownership = ownership or fence.acquire(self.store)
        self.step = int(step)
        self.final_dir = self.store.path(f"ckpt-{self.step}")
        self._token = uuid.uuid4().hex[:12]
        if self.store.is_local:
            self.staging_dir = self.store.path(f".tmp-ckpt-{self.step}-{self._token}")
        else:
            self.staging_dir = local_scratch(
                staging_root, expected_bytes, f"bwtf-ckpt-{self.step}-",
                what="a save to the object store (its groups in flight and the index)",
                hint=", or lower CheckpointPolicy.max_group_bytes")
        os.makedirs(self.staging_dir, exist_ok=True)
        _write_json_file(os.path.join(self.staging_dir, WRITER), _identity.current())
        self.checksum = storage_lib.default_checksum()
        self._sealed = {}
        self._pool = futures.ThreadPoolExecutor(_SEAL_THREADS, thread_name_prefix="bwtf-seal")
        # Object stores: (dev, inode) -> (final name, size, checksum) of each
        # file streamed to the bucket, and every object name an upload began.
        self._streamed = {}
        self._uploaded = []
        self._lock = threading.Lock()
        self._keep_existing = None  # decided before the first upload

    @property
    def prefix(self):
        return os.path.join(self.staging_dir, prefix_name(self.step))

    def seal(self, path):
        """Declares the local file ``path`` (in the staging dir) finished.

        It is fsynced and checksummed now, in the background, while later
        files are still being written. finalize() reuses the result only for
        the same file, same inode and size, so a rename inside the staging
        dir (MergeV2Checkpoints renames data files) keeps it; any other file
        is synced and checksummed at finalize as usual.
        """
        # Opened now, so a rename before the background work starts is harmless.
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        self._sealed[(st.st_dev, st.st_ino)] = (
            st.st_size, self._pool.submit(storage_lib.checksum_and_fsync, fd, self.checksum))

    def stream(self, path, name):
        """Object stores: uploads the finished local file ``path`` now, as
        ``ckpt-<N>/<name>`` (the name it has in the committed checkpoint), and
        empties the local file. The file keeps its inode, so a later rename
        inside the staging dir (MergeV2Checkpoints renames data files; it
        never reads them) is found again at finalize, which then lists the
        recorded size and checksum, and checks that the name matches. Local
        stores: ``seal``. Thread-safe: the saver streams two groups at once.
        """
        if self.store.atomic_rename:
            self.seal(path)
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            value = storage_lib.fd_checksum(fd, self.checksum)
        finally:
            os.close(fd)
        if self._prepare_final():
            target = f"{self.final_dir}/{name}"
            self.ownership.check(f"upload to ckpt-{self.step}")
            with self._lock:
                self._uploaded.append(target)
            self.store.upload(path, target)
            _failpoints.reach("group_uploaded")
        os.truncate(path, 0)
        with self._lock:
            self._streamed[(st.st_dev, st.st_ino)] = (name, st.st_size, value)

    def _prepare_final(self):
        """Object stores, once before the first upload: False if an intact
        ckpt-<N> is already there (kept; nothing of this save is uploaded and
        finalize drops it), True once the place is clear."""
        with self._lock:
            if self._keep_existing is None:
                self._keep_existing = not self._clear_broken_final()
            return not self._keep_existing

    def abort(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self._remove_uploaded()

    def _remove_uploaded(self):
        """Removes the objects this save uploaded, unless it was fenced (then
        a newer owner may have written them: nothing is deleted, and without
        a marker they are never trusted). Never raises: abort runs while
        another error is on its way out."""
        with self._lock:
            uploaded, self._uploaded = list(self._uploaded), []
        if not uploaded:
            return
        try:
            self.ownership.check(f"cleanup of the uncommitted ckpt-{self.step}")
            for target in uploaded:
                self.store.remove_tree(target)
        except (OSError, errors.CheckpointError) as e:
            log.warning("Left %d uploaded object(s) of the uncommitted %s (%s); without its "
                        "%s marker no reader trusts them, and the next save of step %d or "
                        "retention removes them.", len(uploaded),
                        self.store.display(self.final_dir), e, MARKER, self.step)

    def finalize(self, variables, extra=None):
        """Commits the staged files; returns the CheckpointRef now visible.

        ``variables`` maps each checkpoint key to {"shape": [...], "dtype": str};
        ``extra`` (a dict of strings) goes into the manifest as it is.
        """
        if self.store.atomic_rename:
            files = _sync_and_describe(self.staging_dir, self._sealed, self.checksum)
        else:
            files = self._describe_streamed()
        self._pool.shutdown(wait=True)
        _failpoints.reach("synced")
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "step": self.step,
            "checksum": self.checksum,
            "prefix": prefix_name(self.step), "files": files, "variables": variables,
            "writer": _identity.current(), "created": time.time(),
        }
        if extra:
            manifest["extra"] = dict(extra)
        manifest_path = os.path.join(self.staging_dir, MANIFEST)
        _write_manifest(manifest_path, manifest)
        _failpoints.reach("manifest_written")
        self.ownership.check(f"commit of ckpt-{self.step}")
        keep = not self._clear_broken_final() if self.store.atomic_rename \
            else not self._prepare_final()
        if keep:
            self.abort()
            return _ref(self.store, self.step)
        if self.store.atomic_rename:
            self.store.rename(self.staging_dir, self.final_dir)
        else:
            self._upload_then_mark(files, manifest_path)
        _failpoints.reach("committed")
        _trust_own_commit(self.store, self.final_dir)
        self.ownership.check("pointer update")
        update_pointers(self.store, self.step)
        return _ref(self.store, self.step)

    def _clear_broken_final(self):
        """False if an intact ckpt-<N> is already there: it is kept (nothing
        replaces a committed checkpoint that verifies) and this save dropped.
        A broken one is moved aside first, so no reader ever sees a mix."""
        self.store.refresh()
        if not self.store.exists(self.final_dir):
            return True
        status = check(self.store, self.final_dir, full=True)
        if status.intact or status.foreign:
            log.warning("Keeping the existing %s (%s); this save of step %d is dropped.",
                        self.store.display(self.final_dir),
                        "intact" if status.intact else status.reason, self.step)
            return False
        log.warning("Replacing the broken %s (%s).", self.store.display(self.final_dir),
                    status.reason)
        if self.store.atomic_rename:
            aside = self.store.path(f".tmp-ckpt-{self.step}-{uuid.uuid4().hex[:12]}")
            self.store.rename(self.final_dir, aside)
            self.store.remove_tree(aside)
        else:
            self.ownership.check(f"removal of the broken ckpt-{self.step}")
            self.store.remove_tree(self.final_dir)
        return True

    def _describe_streamed(self):
        """Object stores: name -> size, checksum of every checkpoint file, the
        streamed ones from their record (their local copy is empty), the
        others (the index) checksummed here. CheckpointError if a streamed
        file is not where the merged checkpoint names it."""
        files, found = {}, set()
        for name in sorted(os.listdir(self.staging_dir)):
            path = os.path.join(self.staging_dir, name)
            if name == WRITER or not os.path.isfile(path):
                continue
            st = os.stat(path)
            record = self._streamed.get((st.st_dev, st.st_ino))
            if record is None:
                files[name] = {"size": st.st_size,
                               self.checksum: storage_lib.local_checksum(path, self.checksum)}
                continue
            if record[0] != name:
                raise errors.CheckpointError(
                    f"a data file uploaded as {record[0]} was merged as {name}; the "
                    f"checkpoint of step {self.step} is dropped (TensorFlow's shard naming changed?)")
            files[name] = {"size": record[1], self.checksum: record[2]}
            found.add((st.st_dev, st.st_ino))
        lost = sorted(r[0] for k, r in self._streamed.items() if k not in found)
        if lost:
            raise errors.CheckpointError(
                f"uploaded data file(s) {', '.join(lost)} are missing from the merged "
                f"checkpoint of step {self.step}; it is dropped")
        return files

    def _upload_then_mark(self, files, manifest_path):
        streamed = {record[0] for record in self._streamed.values()}
        for name in sorted(set(files) - streamed) + [MANIFEST]:
            target = f"{self.final_dir}/{name}"
            with self._lock:
                self._uploaded.append(target)
            self.store.upload(os.path.join(self.staging_dir, name), target)
        with open(manifest_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        # From here on nothing uploaded is removed by abort: should the marker
        # land although its PUT reports a failure, the checkpoint stays whole.
        with self._lock:
            self._uploaded = []
        marker = {"step": self.step, "manifest_sha256": digest, "writer": _identity.current(),
                  "generation": self.ownership.generation}
        self.store.write_atomic(f"{self.final_dir}/{MARKER}", json.dumps(marker).encode())
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def local_scratch(root, expected_bytes, prefix, what="a checkpoint of this model", hint=""):
    """A new local directory under ``root`` (None: the temporary directory)
    for an object-store checkpoint's local files; CheckpointError (one line:
    ``what`` needs so much there, ``hint`` appended) if it would not hold
    ``expected_bytes``."""
    root = root or tempfile.gettempdir()
    try:
        os.makedirs(root, exist_ok=True)
        _remove_dead_scratch(root)
        free = shutil.disk_usage(root).free
    except OSError as e:
        raise errors.CheckpointError(f"cannot use staging directory {root} ({e})") from e
    if expected_bytes and free < expected_bytes * 1.05:
        raise errors.CheckpointError(
            f"staging directory {root} has {free / 2**20:.0f} MiB free; {what} needs "
            f"{expected_bytes / 2**20:.1f} MiB there. Point CheckpointPolicy.staging_dir "
            f"(bwtf-train --ckpt_staging_dir) at a local disk with room{hint}")
    scratch = tempfile.mkdtemp(prefix=prefix, dir=root)
    _write_json_file(os.path.join(scratch, WRITER), _identity.current())
    return scratch


_SCRATCH_RE = re.compile(r"^bwtf-ckpt-(restore-|\d+-)[A-Za-z0-9_]+$")
# A scratch directory is removed only once nothing in it changed for this long:
# a writer in another PID namespace (a container sharing the host name and the
# staging disk) looks dead from here while it still saves.
_SCRATCH_IDLE_SECS = 600


def _idle_secs(path):
    """Seconds since anything directly in ``path`` (or ``path`` itself) changed."""
    newest = os.lstat(path).st_mtime
    for entry in os.scandir(path):
        newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return time.time() - newest


def _remove_dead_scratch(root):
    """Removes the scratch directories under ``root`` whose writer is dead (a
    killed save or restore leaves up to its bound there; a requeued job on the
    same node would otherwise pile them up). Directories without a readable
    writer record (one being created, not ours), and those changed in the last
    _SCRATCH_IDLE_SECS, are left alone."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if not _SCRATCH_RE.match(name) or os.path.islink(path) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, WRITER), encoding="utf-8") as f:
                record = json.load(f)
            idle = _idle_secs(path)
        except (OSError, ValueError):
            continue
        if not _identity.is_alive(record) and idle > _SCRATCH_IDLE_SECS:
            log.info("Removing %s: scratch space of a dead checkpoint writer.", path)
            shutil.rmtree(path, ignore_errors=True)


def _trust_own_commit(store, directory):
    """Records a checkpoint this process just committed as fully verified: its
    checksums were computed from the very files it wrote, so reading them all
    back (to repair pointers or prune) would only cost time."""
    try:
        _, _, key = _verify(store, directory, step_of(directory.rsplit("/", 1)[-1]), full=False)
    except (errors.CorruptCheckpointError, OSError):
        return
    _remember(key)


def _write_json_file(path, data):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())


def _write_manifest(path, manifest):
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        _failpoints.reach("manifest_partial")
        f.write(data[len(data) // 2:])
        f.flush()
        os.fsync(f.fileno())
    storage_lib.fsync_path(os.path.dirname(path))


def _sync_and_describe(staging_dir, sealed, algorithm):
    """fsyncs every checkpoint file and the directory; returns name -> size, checksum.

    Files already sealed (same inode and size) reuse their background work;
    the others are checksummed and fsynced in parallel threads, so one file's
    fsync (disk-bound) overlaps another's checksum (CPU-bound).
    """
    names = [n for n in sorted(os.listdir(staging_dir))
             if n != WRITER and os.path.isfile(os.path.join(staging_dir, n))]
    with futures.ThreadPoolExecutor(_SEAL_THREADS) as pool:
        work = {}
        for name in names:
            fd = os.open(os.path.join(staging_dir, name), os.O_RDONLY)
            st = os.fstat(fd)
            done = sealed.get((st.st_dev, st.st_ino))
            if done is not None and done[0] == st.st_size:
                os.close(fd)
            else:
                done = (st.st_size, pool.submit(storage_lib.checksum_and_fsync, fd, algorithm))
            work[name] = done
        files = {name: {"size": size, algorithm: summed.result()}
                 for name, (size, summed) in work.items()}
    storage_lib.fsync_path(staging_dir)
    return files


def _committed_steps(store):
    """Steps of directories that look committed (not verified), ascending."""
    steps = []
    for name in store.listdir(store.root):
        step = step_of(name)
        if step is None or store.is_link(store.path(name)):
            continue
        if store.atomic_rename or store.exists(store.path(name, MARKER)):
            steps.append(step)
    return sorted(steps)


def update_pointers(store, newest_step, crash_points=True):
    """Points LATEST and TF's state file at ``newest_step`` (relative paths)."""
    store = as_storage(store)
    reach = _failpoints.reach if crash_points else (lambda stage: None)
    pointer = {"directory": f"ckpt-{newest_step}", "step": newest_step,
               "prefix": f"ckpt-{newest_step}/{prefix_name(newest_step)}"}
    store.write_atomic(store.path(POINTER), json.dumps(pointer).encode(),
                       on_partial=lambda: reach("pointer_partial"))
    reach("pointer_written")
    others = [s for s in _committed_steps(store) if s != newest_step] + [newest_step]
    lines = [f'model_checkpoint_path: "{pointer["prefix"]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{s}/{prefix_name(s)}"' for s in others]
    store.write_atomic(store.path(STATE_FILE), ("\n".join(lines) + "\n").encode())
    reach("state_written")


# A manifest lists a few files and variables: anything much larger is not ours.
_MANIFEST_LIMIT = 64 * 2**20
_SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_manifest(manifest):
    """Raises CorruptCheckpointError unless every field a reader uses has its type."""
    problems = []
    if not _is_int(manifest.get("step")) or manifest["step"] < 0:
        problems.append(f"'step' is {manifest.get('step')!r}, expected an integer >= 0")
    prefix = manifest.get("prefix", "")
    if not isinstance(prefix, str) or (prefix and not _SAFE_NAME_RE.match(prefix)):
        problems.append(f"'prefix' is {prefix!r}, expected a plain file name")
    files = manifest.get("files")
    if not isinstance(files, dict):
        problems.append(f"'files' is a {type(files).__name__}, expected an object")
    else:
        for name, meta in files.items():
            if not _SAFE_NAME_RE.match(name) or name in (MANIFEST, MARKER, WRITER):
                problems.append(f"file name {name[:80]!r} is not a plain name inside the "
                                "checkpoint directory")
            elif not isinstance(meta, dict) or not _is_int(meta.get("size")):
                problems.append(f"file {name!r} has no integer 'size'")
            if len(problems) > 3:
                break
    for key, kind in (("variables", dict), ("writer", dict), ("created", (int, float))):
        if key in manifest and not isinstance(manifest[key], kind):
            problems.append(f"'{key}' has the wrong type ({type(manifest[key]).__name__})")
    if problems:
        raise errors.CorruptCheckpointError(f"{MANIFEST} is malformed: {'; '.join(problems)}")


def parse_manifest(raw):
    """The manifest in ``raw`` bytes, validated; CorruptCheckpointError if unusable."""
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.CorruptCheckpointError(f"{MANIFEST} is not valid JSON ({e})")
    except RecursionError:
        raise errors.CorruptCheckpointError(f"{MANIFEST} is nested too deeply to be a manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise errors.CorruptCheckpointError(
            f"foreign {MANIFEST}: format is {str(found)[:80]!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not _is_int(version) or version > FORMAT_VERSION:
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} has format_version {repr(version)[:40]}; this bwtf reads up to "
            f"{FORMAT_VERSION}. Upgrade bwtf to read it")
    if not isinstance(manifest.get("files"), dict) or not _is_int(manifest.get("step")):
        raise errors.CorruptCheckpointError(f"{MANIFEST} lacks its 'files' or 'step' entry")
    _validate_manifest(manifest)
    return manifest


def _read_manifest_bytes(store, directory):
    try:
        return store.read_bytes(f"{directory}/{MANIFEST}", limit=_MANIFEST_LIMIT)
    except FileNotFoundError:
        raise errors.CorruptCheckpointError(
            f"no {MANIFEST}: uncommitted (its writer died before finishing) or not a bwtf checkpoint")


def read_manifest(store, directory):
    """The parsed manifest of ``directory``; CorruptCheckpointError if unusable."""
    return parse_manifest(_read_manifest_bytes(store, directory))


def checksum_of(manifest):
    """The checksum algorithm a manifest's files were summed with."""
    if manifest.get("format_version") == 1:
        return _V1_CHECKSUM
    algorithm = manifest.get("checksum")
    if algorithm not in storage_lib.CHECKSUMS:
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} names checksum {str(algorithm)[:40]!r}; expected one of "
            f"{', '.join(storage_lib.CHECKSUMS)}")
    return algorithm


def _check_sizes(store, directory, manifest):
    """Checks every listed file's size; returns (total bytes, fingerprint).

    The fingerprint (each file's size, mtime and inode or generation) keys
    the full-check cache, so a file rewritten after a check is checked again.
    """
    prefix = manifest.get("prefix", "")
    names = manifest["files"]
    if f"{prefix}.index" not in names or not any(".data-" in n for n in names):
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} lists no {prefix}.index or no data file")
    total, fingerprint = 0, []
    for name, meta in sorted(names.items()):
        try:
            size, version = store.stat(f"{directory}/{name}")
        except FileNotFoundError:
            raise errors.CorruptCheckpointError(f"{name} is missing")
        if size != meta.get("size"):
            raise errors.CorruptCheckpointError(
                f"{name} has {size} bytes, the manifest says {meta.get('size')} (truncated?)")
        total += size
        fingerprint.append((name, size, version))
    return total, tuple(fingerprint)


def _check_checksums(store, directory, manifest):
    algorithm = checksum_of(manifest)
    for name, meta in sorted(manifest["files"].items()):
        if store.checksum(f"{directory}/{name}", algorithm) != meta.get(algorithm):
            raise errors.CorruptCheckpointError(
                f"{name} fails its {algorithm.upper()} check (corrupted)")


# Checkpoints whose checksums were checked, keyed by (directory, manifest
# digest, file fingerprint): True if every one matched, else why not. A
# process reads a checkpoint's bytes once, however many readers ask (restore,
# the step-limit decision, the evaluator), a corrupt one included.
# Bounded: the oldest entries are dropped first.
_VERIFIED = collections.OrderedDict()
_VERIFIED_LOCK = threading.Lock()
_VERIFIED_MAX = 256


def _is_verified(key):
    """True if the bytes under ``key`` matched; raises CorruptCheckpointError
    again, without reading them, if they did not."""
    with _VERIFIED_LOCK:
        failure = _VERIFIED.get(key)
        if failure is not None:
            _VERIFIED.move_to_end(key)
    if failure is not None and failure is not True:
        raise errors.CorruptCheckpointError(failure)
    return failure is True


def _remember(key, failure=None):
    with _VERIFIED_LOCK:
        _VERIFIED[key] = True if failure is None else failure
        _VERIFIED.move_to_end(key)
        while len(_VERIFIED) > _VERIFIED_MAX:
            _VERIFIED.popitem(last=False)


def forget_verified():
    """Drops every cached verification (tests; a reader that wants a recheck)."""
    with _VERIFIED_LOCK:
        _VERIFIED.clear()


def _broken(store, directory, step, reason, foreign=False):
    return CheckpointStatus(store.display(directory), step if step is not None else -1,
                            False, reason, foreign=foreign)


def _unreadable(store, directory, step, error):
    """A checkpoint that could not be read: a file gone is broken; any other
    read error (EIO, a stale handle, a timeout) may pass, so the checkpoint is
    not used but kept (``foreign``: retention and a save of the same step
    leave it alone) until a later look can read it."""
    if isinstance(error, FileNotFoundError):
        return _broken(store, directory, step, f"unreadable: {error}")
    return _broken(store, directory, step, f"unreadable, kept until it can be read: {error}",
                   foreign=True)


def _verify(store, directory, step, full):
    """(manifest, size, cache key); raises CorruptCheckpointError."""
    if not store.atomic_rename and not store.exists(f"{directory}/{MARKER}"):
        raise errors.CorruptCheckpointError(f"no {MARKER} marker: uncommitted")
    raw = _read_manifest_bytes(store, directory)
    manifest = parse_manifest(raw)
    if manifest["step"] != step:
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} is for step {manifest['step']}, not {step}: "
            "copied from another checkpoint?")
    storage_lib.require_checksum(checksum_of(manifest))
    if not store.atomic_rename:
        _check_marker(store, directory, raw)
    size, fingerprint = _check_sizes(store, directory, manifest)
    key = (store.display(directory), hashlib.sha256(raw).hexdigest(), fingerprint)
    if full and not _is_verified(key):
        try:
            _check_checksums(store, directory, manifest)
        except errors.CorruptCheckpointError as e:
            _remember(key, str(e))
            raise
        _remember(key)
    return manifest, size, key


def check_local_copy(store, directory, manifest, local_dir):
    """The status of ``directory`` judged by its downloaded copy in local_dir:
    every file's size and checksum against ``manifest`` (read once, there)."""
    step = manifest["step"]
    try:
        local = storage_lib.Storage(local_dir)
        _check_sizes(local, local.root, manifest)
        _check_checksums(local, local.root, manifest)
    except errors.CorruptCheckpointError as e:
        return _broken(store, directory, step, str(e))
    except OSError as e:
        return _unreadable(store, directory, step, e)
    return CheckpointStatus(store.display(directory), step, True, "",
                            sum(m["size"] for m in manifest["files"].values()),
                            float(manifest.get("created", 0.0)))


def check(model_dir, directory, full=True):
    """Verifies one checkpoint directory; returns its CheckpointStatus.

    The manifest and the sizes are read every time (cheap); the checksums
    once per manifest and file fingerprint (see _VERIFIED).
    """
    store = as_storage(model_dir)
    name = directory.rstrip("/").rsplit("/", 1)[-1]
    step = step_of(name)
    if step is None:
        loose = _LOOSE_DIR_RE.match(name)
        return _broken(store, directory, int(loose.group(1)) if loose else None,
                       f"the directory name is not ckpt-<step> (expected "
                       f"ckpt-{int(loose.group(1))})" if loose else
                       "the directory name is not ckpt-<step>", foreign=True)
    if store.is_link(directory):
        return _broken(store, directory, step, "is a symbolic link; bwtf never follows links "
                       "inside model_dir", foreign=True)
    try:
        manifest, size, _ = _verify(store, directory, step, full)
    except errors.CorruptCheckpointError as e:
        return _broken(store, directory, step, str(e))
    except OSError as e:
        return _unreadable(store, directory, step, e)
    except (ValueError, TypeError, RecursionError) as e:
        return _broken(store, directory, step, f"unreadable: {e}")
    return CheckpointStatus(store.display(directory), step, True, "", size,
                            float(manifest.get("created", 0.0)))


def _check_marker(store, directory, raw_manifest):
    """The COMMITTED marker must name this manifest's digest (older markers name
    only the step, and are accepted)."""
    try:
        marker = json.loads(store.read_bytes(f"{directory}/{MARKER}", limit=2**16))
    except (ValueError, RecursionError):
        raise errors.CorruptCheckpointError(f"{MARKER} marker is not valid JSON")
    digest = marker.get("manifest_sha256") if isinstance(marker, dict) else None
    if digest is not None and digest != hashlib.sha256(raw_manifest).hexdigest():
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} does not match the digest its {MARKER} marker names (rewritten "
            "after the commit?)")


def verify_checkpoint(directory, full=True):
    """Raises CorruptCheckpointError naming the reason unless ``directory`` is intact."""
    directory = str(directory).rstrip("/")
    parent, _, _ = directory.rpartition("/")
    store = storage_lib.Storage(parent or "/")
    status = check(store, store.path(directory.rsplit("/", 1)[-1]), full=full)
    if not status.intact:
        raise errors.CorruptCheckpointError(f"{status.directory}: {status.reason}")


def candidate_names(store):
    """Names in model_dir that are, or look like, checkpoint directories."""
    if not store.isdir(store.root):
        return []
    return [n for n in store.listdir(store.root) if _LOOSE_DIR_RE.match(n)]


def list_checkpoints(model_dir, full=False):
    """Every ``ckpt-<N>`` directory of model_dir, oldest first, with its status.

    Names that only look like one (``ckpt-009``) and symbolic links are listed
    as broken and ``foreign``: never used, never deleted.
    """
    store = as_storage(model_dir)
    statuses = [check(store, store.path(n), full=full) for n in candidate_names(store)]
    return sorted(statuses, key=lambda s: (s.step, s.directory))


def latest_intact_checkpoint(model_dir, full=True):
    """The newest checkpoint that verifies, or None; logs what it skipped.

    This is bwtf's one verified reader: training restore, the step-limit
    decision, the evaluator, bwtf-eval, bwtf-export and the CLI all ask it.
    ``full=False`` checks sizes only (tasks that do not restore: workers).
    """
    store = as_storage(model_dir)
    names = candidate_names(store)
    steps = sorted((s for s in map(step_of, names) if s is not None), reverse=True)
    for step in steps:
        status = check(store, store.path(f"ckpt-{step}"), full=full)
        if status.intact:
            return _ref(store, step)
        log.warning("Skipping checkpoint %s: %s", status.directory, status.reason)
    return None


def resolve_checkpoint(path):
    """The verified CheckpointRef for ``path``: a model_dir (its newest intact
    checkpoint), a ``ckpt-<N>`` directory or a prefix inside one. Raises
    CorruptCheckpointError (naming the path and why) if it is not intact, and
    returns None for a model_dir without an intact checkpoint."""
    text = str(path).rstrip("/")
    head, _, tail = text.rpartition("/")
    if step_of(tail) is None and step_of(head.rpartition("/")[2]) is not None:
        step = step_of(head.rpartition("/")[2])
        if tail != prefix_name(step):
            raise errors.CorruptCheckpointError(
                f"{text} is not the checkpoint prefix of {head} (expected {prefix_name(step)})")
        text, head, tail = head, head.rpartition("/")[0], head.rpartition("/")[2]
    if step_of(tail) is None:
        return latest_intact_checkpoint(text)
    store = storage_lib.Storage(head or "/")
    status = check(store, store.path(tail), full=True)
    if not status.intact:
        raise errors.CorruptCheckpointError(f"{status.directory}: {status.reason}")
    return _ref(store, status.step)


def read_pointer(model_dir):
    """The step LATEST names, or None when it is missing or unreadable."""
    store = as_storage(model_dir)
    try:
        pointer = json.loads(store.read_bytes(store.path(POINTER), limit=2**16))
    except (OSError, ValueError, RecursionError, errors.CheckpointError):
        return None
    step = pointer.get("step") if isinstance(pointer, dict) else None
    return step if _is_int(step) else None


def _state_file_step(store):
    try:
        text = store.read_bytes(store.path(STATE_FILE), limit=2**20).decode("utf-8", "replace")
    except (OSError, errors.CheckpointError):
        return None
    match = re.search(r'^model_checkpoint_path: "ckpt-(\d+)/', text, re.MULTILINE)
    return int(match.group(1)) if match else None


def repair_pointers(model_dir, force=False):
    """Points LATEST and TF's state file at the newest intact checkpoint.

    The chief calls this once it owns model_dir and before anything (Estimator's
    step-limit decision, restore) reads the pointers: a crash between the
    rename and the pointer writes, or between the two pointer writes, or a
    newest checkpoint that went corrupt, leaves them naming the wrong step.
    Returns the newest intact CheckpointRef (or None).
    """
    store = as_storage(model_dir)
    ref = latest_intact_checkpoint(store)
    want = ref.step if ref is not None else None
    if not force and read_pointer(store) == want and _state_file_step(store) == want:
        return ref
    if ref is None:
        for name in (POINTER, STATE_FILE):
            if store.exists(store.path(name)):
                log.warning("Removing %s: no intact checkpoint is left for it to name.",
                            store.display(store.path(name)))
                store.remove_tree(store.path(name))
        return None
    if not force:
        log.warning("Pointing %s and %s at %s, the newest intact checkpoint.",
                    store.display(store.path(POINTER)), STATE_FILE, ref.path)
    update_pointers(store, ref.step, crash_points=False)
    return ref


def require_writable_model_dir(model_dir):
    """Raises CheckpointError now if checkpoints could not be written to model_dir."""
    store = as_storage(model_dir)
    try:
        store.makedirs(store.root)
        probe = store.path(f".bwtf-write-probe-{uuid.uuid4().hex[:8]}")
        store.write_atomic(probe, b"probe")
        store.remove_tree(probe)
    except (OSError, PermissionError) as e:
        raise errors.CheckpointError(
            f"model_dir {store.display(store.root)} is not writable ({e}). Checkpoints "
            "would be lost: choose a --model_dir on a shared filesystem this user can "
            "write, or fix its permissions, before training") from e
    if store.isdir(store.root) and store.exists(store.path(STATE_FILE)):
        _warn_foreign_state_file(store)


def _warn_foreign_state_file(store):
    text = store.read_bytes(store.path(STATE_FILE)).decode("utf-8", "replace")
    if 'model_checkpoint_path: "ckpt-' not in text:
        log.warning("model_dir %s holds a TF 'checkpoint' file not written by bwtf; "
                    "its checkpoints are used only if they match this model.",
                    store.display(store.root))
