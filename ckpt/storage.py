"""Where checkpoints live, through fsspec: local/Lustre paths, gs://, memory://.

A Storage object hides the filesystem behind the few operations the commit
protocol needs. It states one fact the protocol depends on: whether directory
rename is atomic (POSIX and Lustre: yes; object stores: no, so they get the
commit-marker protocol instead). It leaves out caching and retries, which
fsspec and gcsfs already do.
"""
import mmap
import os
import zlib

import fsspec
from fsspec.implementations import local as fsspec_local

import bwtf
from bwtf.ckpt import errors

try:
    import google_crc32c
except ImportError:  # optional: zlib's CRC32 is the fallback
    google_crc32c = None

_CHUNK = 8 * 1024 * 1024
CHECKSUMS = ("crc32", "crc32c")


def fsync_path(path):
    """fsync a local file or directory so a crash after it cannot lose it."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_checksum():
    """The checksum new manifests use: CRC32C when google-crc32c's C extension
    (hardware CRC32C, several times faster than zlib) is importable, else
    zlib's CRC32. The manifest records which one, so readers need not guess."""
    if google_crc32c is not None and google_crc32c.implementation == "c":
        return "crc32c"
    return "crc32"


def _extender(algorithm):
    if algorithm == "crc32":
        return zlib.crc32
    if algorithm == "crc32c":
        if google_crc32c is None:
            raise errors.CorruptCheckpointError(
                "unverifiable: its manifest uses CRC32C checksums, but the google-crc32c "
                "package is not installed. Install it (pip install google-crc32c)")
        return lambda chunk, value: google_crc32c.extend(value, chunk)
    raise errors.CorruptCheckpointError(
        f"unknown checksum algorithm {algorithm!r}; expected one of {', '.join(CHECKSUMS)}")


def stream_checksum(read, algorithm):
    """Checksum of the chunks ``read(size)`` returns until it returns b""."""
    extend, value = _extender(algorithm), 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return value
        value = extend(chunk, value)


def fd_checksum(fd, algorithm):
    """Checksum of an open local file; zlib's CRC32 reads through mmap (no copy,
    and it releases the GIL), CRC32C in chunks (its C extension wants bytes)."""
    if algorithm != "crc32":
        offset = [0]

        def read(size):
            chunk = os.pread(fd, size, offset[0])
            offset[0] += len(chunk)
            return chunk
        return stream_checksum(read, algorithm)
    if os.fstat(fd).st_size == 0:
        return 0
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
        return zlib.crc32(view)


def local_checksum(path, algorithm):
    fd = os.open(path, os.O_RDONLY)
    try:
        return fd_checksum(fd, algorithm)
    finally:
        os.close(fd)


def checksum_and_fsync(fd, algorithm):
    """Checksums an open file, then fsyncs it, then closes it. The checksum
    goes first: it reads the page cache, the fsync waits for the disk."""
    try:
        value = fd_checksum(fd, algorithm)
        os.fsync(fd)
        return value
    finally:
        os.close(fd)


class Storage:
    """One model_dir's filesystem and root path."""

    def __init__(self, url, **storage_options):
        self.url = str(url).rstrip("/") or "/"
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        except (ValueError, ImportError) as e:
            raise errors.CheckpointError(
                f"Cannot open model_dir {self.url!r}: {e}. Expected a local path, "
                "gs://bucket/dir or memory://dir") from e
        self.root = self.root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, fsspec_local.LocalFileSystem)

    @property
    def atomic_rename(self):
        return self.is_local

    def path(self, *parts):
        return "/".join([self.root] + [p.strip("/") for p in parts if p])

    def display(self, path):
        """The path as the user wrote it (with its protocol), for messages."""
        if self.is_local:
            return path
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path.lstrip('/')}"

    def listdir(self, path):
        try:
            entries = self.fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def exists(self, path):
        return self.fs.exists(path)

    def isdir(self, path):
        return self.fs.isdir(path)

    def size(self, path):
        return self.fs.size(path)

    def read_bytes(self, path):
        return self.fs.cat_file(path)

    def checksum(self, path, algorithm):
        if self.is_local:
            return local_checksum(path, algorithm)
        with self.fs.open(path, "rb") as f:
            return stream_checksum(f.read, algorithm)

    def write_atomic(self, path, data, on_partial=None):
        """Replaces ``path`` with ``data`` so readers see the old or the new whole.

        Local: write a temporary sibling, fsync it, rename over, fsync the
        directory. Object stores: one PUT, which is atomic per object.
        ``on_partial`` is called when half the temporary file is written (a
        failpoint hook for crash tests).
        """
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        bwtf.write_atomically(path, data, on_partial=on_partial)

    def upload(self, local_path, path):
        self.fs.put_file(local_path, path)

    def download(self, path, local_path):
        self.fs.get_file(path, local_path)

    def remove_tree(self, path):
        try:
            self.fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def rename(self, src, dst):
        """Atomic directory rename; only valid when ``atomic_rename``."""
        assert self.is_local, "rename is only atomic on local/POSIX filesystems"
        os.rename(src, dst)
        fsync_path(os.path.dirname(dst))

    def makedirs(self, path):
        self.fs.makedirs(path, exist_ok=True)

    def modified(self, path):
        """Modification time in epoch seconds, or None when the store has none."""
        try:
            value = self.fs.modified(path)
        except (NotImplementedError, FileNotFoundError, IsADirectoryError, OSError):
            return None
        return value.timestamp() if value is not None else None
