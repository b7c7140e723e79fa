"""Where checkpoints live, through fsspec: local/Lustre paths, gs://, memory://.

A Storage object hides the filesystem behind the few operations the commit
protocol needs. It states one fact the protocol depends on: whether directory
rename is atomic (POSIX and Lustre: yes; object stores: no, so they get the
commit-marker protocol instead). It leaves out retries, which gcsfs does.

Nothing under a local root is reached through a symbolic link: every open
below the root walks the path one component at a time with ``O_NOFOLLOW``
(``bwtf.open_below`` and ``bwtf.write_atomically``, the package's one walk and
one atomic write; a link planted in a run folder is refused with
LinkRefusedError, never followed), and deleting a link removes the link, not
what it points to.
Object-store listings are refreshed before every read of a directory
(gcsfs caches them, and a long-lived reader would never see new files).
"""
import ctypes
import functools
import mmap
import os
import shutil
import stat
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


def _ignore_vanished(function, path, exc_info):
    del function
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


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


def require_checksum(algorithm):
    """Raises CorruptCheckpointError now if ``algorithm`` cannot be computed here."""
    _extender(algorithm)


def stream_checksum(read, algorithm):
    """Checksum of the chunks ``read(size)`` returns until it returns b""."""
    extend, value = _extender(algorithm), 0
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            return value
        value = extend(chunk, value)


def _native_crc32c():
    """libcrc32c's ``crc32c_extend`` through ctypes, or None.

    google-crc32c's extension only takes ``bytes``, so summing a file through
    it copies every byte once more (os.pread into fresh buffers); ctypes can
    hand it a read-only mapping of the file instead, without a copy and with
    the GIL released. The library is the one google-crc32c's extension links.
    """
    if google_crc32c is None or google_crc32c.implementation != "c":
        return None
    return _load_native_crc32c()


@functools.lru_cache(maxsize=None)
def _load_native_crc32c():
    try:
        from google_crc32c import _crc32c  # pylint: disable=import-outside-toplevel
        extend = ctypes.CDLL(_crc32c.__file__).crc32c_extend
    except (ImportError, OSError, AttributeError):
        return None
    extend.restype = ctypes.c_uint32
    extend.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    return extend


def _mapped_checksum(fd, extend):
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    # ACCESS_COPY: a private mapping ctypes may address; nothing writes to it.
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as view:
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            view.madvise(mmap.MADV_SEQUENTIAL)
        buffer = (ctypes.c_char * size).from_buffer(view)
        try:
            base, value = ctypes.addressof(buffer), 0
            for offset in range(0, size, _CHUNK):
                value = extend(value, base + offset, min(_CHUNK, size - offset))
            return value
        finally:
            del buffer


def fd_checksum(fd, algorithm):
    """Checksum of an open local file, read through a mapping (no copy, and
    the GIL released) where possible: zlib's CRC32 always, CRC32C through
    libcrc32c (else in chunks through google-crc32c, which wants bytes)."""
    if algorithm != "crc32":
        extend = _native_crc32c() if algorithm == "crc32c" else None
        if extend is not None:
            return _mapped_checksum(fd, extend)
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


class LinkRefusedError(errors.CorruptCheckpointError, bwtf.LinkRefusedError):
    """A path below model_dir is a symbolic link; bwtf does not follow it.

    A CorruptCheckpointError, so readers skip such a checkpoint with a warning.
    """


def _as_checkpoint_error(error):
    return LinkRefusedError(error.errno, error.strerror)


def open_below(root, path, flags, mode=0o666):
    """``bwtf.open_below`` (no link below ``root`` followed), raising this module's LinkRefusedError."""
    try:
        return bwtf.open_below(root, path, flags, mode)
    except LinkRefusedError:
        raise
    except bwtf.LinkRefusedError as e:
        raise _as_checkpoint_error(e) from None


def _filesystem(url, storage_options):
    """(fsspec filesystem, root path) for ``url``.

    gs:// against a GCS emulator (``STORAGE_EMULATOR_HOST``) gets gcsfs's
    plain object-store class: since 2026 gcsfs's default class first asks the
    Storage Control API, which no emulator serves, for the bucket's layout,
    and logs a warning on every call when it cannot (hundreds of lines per
    checkpoint). Real buckets keep the default class, which handles zonal and
    hierarchical-namespace buckets, and whatever the user registered.
    """
    protocol, _ = fsspec.core.split_protocol(url)
    if protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        from gcsfs import core as gcsfs_core  # pylint: disable=import-outside-toplevel
        fs_class = gcsfs_core.GCSFileSystem
        return fs_class(**storage_options), fs_class._strip_protocol(url)  # pylint: disable=protected-access
    return fsspec.core.url_to_fs(url, **storage_options)


class Storage:
    """One model_dir's filesystem and root path."""

    def __init__(self, url, **storage_options):
        self.url = str(url).rstrip("/") or "/"
        try:
            self.fs, self.root = _filesystem(self.url, storage_options)
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

    def _below_root(self, path):
        return self.is_local and path != self.root and path.startswith(self.root.rstrip("/") + "/")

    def refresh(self, path=None):
        """Drops cached listings (gcsfs caches them) so the next read is fresh."""
        if not self.is_local:
            self.fs.invalidate_cache(path)

    def listdir(self, path):
        self.refresh(path)
        try:
            entries = self.fs.ls(path, detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def is_link(self, path):
        """True if ``path`` itself is a symbolic link (local stores only)."""
        return self.is_local and os.path.islink(path)

    def exists(self, path):
        if self.is_local:
            return os.path.lexists(path)
        return self.fs.exists(path)

    def isdir(self, path):
        if self._below_root(path):
            return os.path.isdir(path) and not os.path.islink(path)
        return self.fs.isdir(path)

    def _open_local(self, path, flags=os.O_RDONLY, mode=0o644):
        if self._below_root(path):
            return open_below(self.root, path, flags, mode)
        return os.open(path, flags, mode)

    def _fd_regular(self, path):
        fd = self._open_local(path)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise errors.CorruptCheckpointError(f"{path} is not a regular file")
        return fd

    def size(self, path):
        if not self.is_local:
            return self.fs.size(path)
        fd = self._fd_regular(path)
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def stat(self, path):
        """(size, version) of a file; version changes when the file is rewritten."""
        if not self.is_local:
            info = self.fs.info(path)
            version = info.get("generation") or info.get("updated") or info.get("mtime") \
                or info.get("created")
            return info["size"], str(version)
        fd = self._fd_regular(path)
        try:
            st = os.fstat(fd)
            return st.st_size, (st.st_ino, st.st_mtime_ns)
        finally:
            os.close(fd)

    def read_bytes(self, path, limit=None):
        """The file's bytes; over ``limit`` bytes is a CorruptCheckpointError."""
        if not self.is_local:
            if limit is not None and self.fs.size(path) > limit:
                raise errors.CorruptCheckpointError(f"{path} is over {limit} bytes")
            return self.fs.cat_file(path)
        fd = self._fd_regular(path)
        try:
            if limit is not None and os.fstat(fd).st_size > limit:
                raise errors.CorruptCheckpointError(f"{path} is over {limit} bytes")
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
        finally:
            os.close(fd)

    def checksum(self, path, algorithm):
        if self.is_local:
            fd = self._fd_regular(path)
            try:
                return fd_checksum(fd, algorithm)
            finally:
                os.close(fd)
        with self.fs.open(path, "rb") as f:
            return stream_checksum(f.read, algorithm)

    def write_atomic(self, path, data, on_partial=None):
        """Replaces ``path`` with ``data`` so readers see the old or the new whole.

        Local: ``bwtf.write_atomically`` with model_dir as the run folder (no
        link below it followed; file and folder fsynced). Object stores: one
        PUT, which is atomic per object. ``on_partial`` is called when half the
        temporary file is written (a failpoint hook for crash tests).
        """
        if not self.is_local:
            self.fs.pipe_file(path, data)
            return
        try:
            bwtf.write_atomically(path, data, on_partial=on_partial,
                                  root=self.root if self._below_root(path) else None)
        except LinkRefusedError:
            raise
        except bwtf.LinkRefusedError as e:
            raise _as_checkpoint_error(e) from None

    def upload(self, local_path, path):
        self.fs.put_file(local_path, path)

    def download(self, path, local_path):
        self.fs.get_file(path, local_path)

    def remove_tree(self, path):
        """Deletes ``path``; a symbolic link is unlinked, never followed."""
        if not self.is_local:
            try:
                self.fs.rm(path, recursive=True)
            except FileNotFoundError:
                pass
            return
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                # CPython's rmtree works through directory fds and unlinks
                # links inside the tree instead of following them.
                shutil.rmtree(path, onerror=_ignore_vanished)
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
