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
On object stores (gs://, memory://) rename is not atomic: TF writes into a
local staging directory, the files are uploaded in place into ``ckpt-<N>/``,
the manifest after them and the COMMITTED marker last. There a directory
without the marker is uncommitted, whatever else it holds.

Reading: a checkpoint is intact when its manifest (and marker) is present,
well formed, ours, for the right step, and every listed file has the listed
size (and, in a full check, checksum). Format version 1 manifests (CRC32
only, no ``checksum`` entry) are still read. Readers take the newest intact one and
log which newer ones they skipped and why.

This module does not know TensorFlow: the saver hands it a staging prefix and
the variable list. Retention is in retention.py.
"""
from concurrent import futures
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid

from bwtf.ckpt import _failpoints
from bwtf.ckpt import _identity
from bwtf.ckpt import errors
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

_DIR_RE = re.compile(r"^ckpt-(\d+)$")
TMP_DIR_RE = re.compile(r"^\.tmp-ckpt-(\d+)-([0-9a-f]+)$")

log = logging.getLogger("bwtf.ckpt")


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
    nothing a reader would trust.
    """

    def __init__(self, model_dir, step):
        _failpoints.check_config()
        self.store = as_storage(model_dir)
        self.step = int(step)
        self.final_dir = self.store.path(f"ckpt-{self.step}")
        self._token = uuid.uuid4().hex[:12]
        if self.store.is_local:
            self.staging_dir = self.store.path(f".tmp-ckpt-{self.step}-{self._token}")
        else:
            self.staging_dir = tempfile.mkdtemp(prefix=f"bwtf-ckpt-{self.step}-")
        os.makedirs(self.staging_dir, exist_ok=True)
        _write_json_file(os.path.join(self.staging_dir, WRITER), _identity.current())
        self.checksum = storage_lib.default_checksum()
        self._sealed = {}
        self._pool = futures.ThreadPoolExecutor(_SEAL_THREADS, thread_name_prefix="bwtf-seal")

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

    def abort(self):
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.staging_dir, ignore_errors=True)

    def finalize(self, variables, extra=None):
        """Commits the staged files; returns the CheckpointRef now visible.

        ``variables`` maps each checkpoint key to {"shape": [...], "dtype": str};
        ``extra`` (a dict of strings) goes into the manifest as it is.
        """
        files = _sync_and_describe(self.staging_dir, self._sealed, self.checksum)
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
        _write_manifest(os.path.join(self.staging_dir, MANIFEST), manifest)
        _failpoints.reach("manifest_written")
        self._clear_broken_final()
        if self.store.atomic_rename:
            self.store.rename(self.staging_dir, self.final_dir)
        else:
            self._upload_then_mark(files)
        _failpoints.reach("committed")
        update_pointers(self.store, self.step)
        return _ref(self.store, self.step)

    def _clear_broken_final(self):
        """A ckpt-<N> already there (a save of the same step after a restart)
        is replaced; it is moved aside first so no reader ever sees a mix."""
        if not self.store.exists(self.final_dir):
            return
        status = check(self.store, self.final_dir, full=False)
        log.warning("Replacing existing %s (%s).", self.store.display(self.final_dir),
                    "intact" if status.intact else status.reason)
        if self.store.atomic_rename:
            aside = self.store.path(f".tmp-ckpt-{self.step}-{uuid.uuid4().hex[:12]}")
            self.store.rename(self.final_dir, aside)
            self.store.remove_tree(aside)
        else:
            self.store.remove_tree(self.final_dir)

    def _upload_then_mark(self, files):
        for name in sorted(files) + [MANIFEST]:
            self.store.upload(os.path.join(self.staging_dir, name), f"{self.final_dir}/{name}")
        self.store.write_atomic(f"{self.final_dir}/{MARKER}",
                                json.dumps({"step": self.step}).encode())
        shutil.rmtree(self.staging_dir, ignore_errors=True)


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
        if step is None:
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


def read_manifest(store, directory):
    """The parsed manifest of ``directory``; CorruptCheckpointError if unusable."""
    path = f"{directory}/{MANIFEST}"
    try:
        raw = store.read_bytes(path)
    except FileNotFoundError:
        raise errors.CorruptCheckpointError(
            f"no {MANIFEST}: uncommitted (its writer died before finishing) or not a bwtf checkpoint")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.CorruptCheckpointError(f"{MANIFEST} is not valid JSON ({e})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise errors.CorruptCheckpointError(
            f"foreign {MANIFEST}: format is {found!r}, expected {FORMAT!r}")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} has format_version {version!r}; this bwtf reads up to "
            f"{FORMAT_VERSION}. Upgrade bwtf to read it")
    if not isinstance(manifest.get("files"), dict) or not isinstance(manifest.get("step"), int):
        raise errors.CorruptCheckpointError(f"{MANIFEST} lacks its 'files' or 'step' entry")
    return manifest


def checksum_of(manifest):
    """The checksum algorithm a manifest's files were summed with."""
    if manifest.get("format_version") == 1:
        return _V1_CHECKSUM
    algorithm = manifest.get("checksum")
    if algorithm not in storage_lib.CHECKSUMS:
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} names checksum {algorithm!r}; expected one of "
            f"{', '.join(storage_lib.CHECKSUMS)}")
    return algorithm


def _check_files(store, directory, manifest, full):
    prefix = manifest.get("prefix", "")
    algorithm = checksum_of(manifest)
    names = manifest["files"]
    if f"{prefix}.index" not in names or not any(".data-" in n for n in names):
        raise errors.CorruptCheckpointError(
            f"{MANIFEST} lists no {prefix}.index or no data file")
    total = 0
    for name, meta in sorted(names.items()):
        path = f"{directory}/{name}"
        try:
            size = store.size(path)
        except FileNotFoundError:
            raise errors.CorruptCheckpointError(f"{name} is missing")
        if size != meta.get("size"):
            raise errors.CorruptCheckpointError(
                f"{name} has {size} bytes, the manifest says {meta.get('size')} (truncated?)")
        if full and store.checksum(path, algorithm) != meta.get(algorithm):
            raise errors.CorruptCheckpointError(
                f"{name} fails its {algorithm.upper()} check (corrupted)")
        total += size
    return total


def check(model_dir, directory, full=True):
    """Verifies one checkpoint directory; returns its CheckpointStatus."""
    store = as_storage(model_dir)
    step = step_of(directory.rstrip("/").rsplit("/", 1)[-1])
    try:
        if step is None:
            raise errors.CorruptCheckpointError("the directory name is not ckpt-<step>")
        if not store.atomic_rename and not store.exists(f"{directory}/{MARKER}"):
            raise errors.CorruptCheckpointError(f"no {MARKER} marker: uncommitted")
        manifest = read_manifest(store, directory)
        if manifest["step"] != step:
            raise errors.CorruptCheckpointError(
                f"{MANIFEST} is for step {manifest['step']}, not {step}: "
                "copied from another checkpoint?")
        size = _check_files(store, directory, manifest, full)
    except errors.CorruptCheckpointError as e:
        return CheckpointStatus(store.display(directory), step or -1, False, str(e))
    except OSError as e:
        return CheckpointStatus(store.display(directory), step or -1, False, f"unreadable: {e}")
    return CheckpointStatus(store.display(directory), step, True, "", size,
                            float(manifest.get("created", 0.0)))


def verify_checkpoint(directory, full=True):
    """Raises CorruptCheckpointError naming the reason unless ``directory`` is intact."""
    directory = str(directory).rstrip("/")
    parent, _, _ = directory.rpartition("/")
    store = storage_lib.Storage(parent or "/")
    status = check(store, store.path(directory.rsplit("/", 1)[-1]), full=full)
    if not status.intact:
        raise errors.CorruptCheckpointError(f"{status.directory}: {status.reason}")


def list_checkpoints(model_dir, full=False):
    """Every ``ckpt-<N>`` directory of model_dir, oldest first, with its status."""
    store = as_storage(model_dir)
    steps = sorted(s for s in map(step_of, store.listdir(store.root)) if s is not None)
    return [check(store, store.path(f"ckpt-{s}"), full=full) for s in steps]


def latest_intact_checkpoint(model_dir):
    """The newest checkpoint that fully verifies, or None; logs what it skipped."""
    store = as_storage(model_dir)
    if not store.isdir(store.root):
        return None
    steps = sorted((s for s in map(step_of, store.listdir(store.root)) if s is not None),
                   reverse=True)
    for step in steps:
        status = check(store, store.path(f"ckpt-{step}"), full=True)
        if status.intact:
            return _ref(store, step)
        log.warning("Skipping checkpoint %s: %s", status.directory, status.reason)
    return None


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
