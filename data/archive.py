"""Reads the members of (nested) tar archives, and plain files of a tree, without trusting them.

ImageNet ships as tars of tars: ``ILSVRC2012_img_train.tar`` holds one
``n01440764.tar`` per synset (about 150 MB each), and ``Annotation.tar.gz``
holds one ``.tar.gz`` per synset. Two ways of reading are offered:

* ``TarRegion``: random access to an *uncompressed* tar, either a whole file
  or a member of an outer tar addressed by (offset, size). Only the 512-byte
  headers are read to list the members; each member's bytes are then read with
  one seek. A synset tar is never loaded into memory, and any slice of it can
  be read by a different process (this is how parallel builds split work).
  Damage is located, not just noticed: ``damage`` says where the readable
  members end, whether the tar was cut in a member's data, cut at a member
  boundary (no end-of-archive blocks), or holds a broken header.
* ``iter_stream``/``iter_nested_streams``: one forward pass over a possibly
  compressed tar stream (``r|*``), for ``.tar.gz`` files that cannot be seeked.

Memory is bounded whatever an archive holds: members the caller does not want
are skipped without being read (a stream skips them in fixed-size blocks), a
wanted member larger than ``max_bytes`` is reported instead of read, so one
member of at most ``max_bytes`` (``MAX_SIDE_MEMBER_BYTES`` = 32 MiB for side
files) is in memory at a time. ``read_regular_file`` gives plain files of an
extracted tree the same guarantees: it refuses links, FIFOs and devices
without blocking on them, and files above a size cap.

Archives are untrusted: member names never become filesystem paths, nothing
is written to disk, and links, devices, sparse files and absolute or ``..``
names are skipped and returned as ``UnsafeMember`` records for the report.
Deliberately left out: writing tars (see ``bwtf.data.sample_archive``).
"""
import dataclasses
import errno
import io
import os
import posixpath
import stat
import tarfile
import zlib

MAX_SIDE_MEMBER_BYTES = 32 << 20  # meta.mat is 2.5 MB, a box XML a few KB
_BLOCK = tarfile.BLOCKSIZE
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@dataclasses.dataclass(frozen=True)
class MemberRef:
    """A regular file inside a tar: its name and where its bytes are in the region."""

    name: str
    offset: int
    size: int


@dataclasses.dataclass(frozen=True)
class UnsafeMember:
    """A member that was skipped, and why."""

    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Damage:
    """Where a tar stops being readable: ``offset`` (from the region's start) and why.

    ``cut`` is True when the region ends before the tar does (a copy cut
    short), so the bytes that are missing cannot be looked at.
    """

    offset: int
    reason: str
    cut: bool


class UnsafeFileError(OSError):
    """A file of an extracted tree is a link, a special file, or too large to read."""


def unsafe_name_reason(name):
    """Why a member or file name must not be used, or "" when it is fine."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8, kept by tarfile and os as surrogates
        return "name is not UTF-8; ignored"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute member name ignored"
    if ".." in name.replace("\\", "/").split("/"):
        return "member name with '..' ignored"
    return ""


def unsafe_reason(info):
    """Why a TarInfo must not be read, or "" when it is a safe regular file or directory."""
    name = info.name
    if unsafe_name_reason(name):
        return unsafe_name_reason(name)
    if info.issym() or info.islnk():
        return f"link to {info.linkname!r} ignored"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or FIFO member ignored"
    if info.issparse():
        return "sparse member ignored"
    if not (info.isreg() or info.isdir()):
        return f"member of tar type {info.type!r} ignored"
    return ""


def _too_large(size, max_bytes):
    return f"{size} bytes, above the limit of {max_bytes} bytes for this file; ignored"


class _RegionFile(io.RawIOBase):
    """A read-only, seekable view of bytes [offset, offset + size) of a file."""

    def __init__(self, raw, offset, size):
        super().__init__()
        self._raw, self._start, self._size, self._position = raw, offset, size, 0

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._position

    def seek(self, position, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + position)
        return self._position

    def readinto(self, buffer):
        count = max(0, min(len(buffer), self._size - self._position))
        if count == 0:
            return 0
        self._raw.seek(self._start + self._position)
        data = self._raw.read(count)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


class TarRegion:
    """Random access to an uncompressed tar stored at [offset, offset + size) of ``path``.

    Use as a context manager. ``members()`` lists safe regular files in
    archive order (reading headers only); ``read(ref)`` returns one member.
    After ``members()``, ``damage`` is None for an intact tar, else a Damage.
    """

    def __init__(self, path, offset=0, size=None):
        self.path, self._offset = os.fspath(path), offset
        self._size = os.path.getsize(self.path) - offset if size is None else size
        self._raw = None
        self.unsafe = []
        self.damage = None
        self.listed_bytes = 0  # bytes taken by the members listed (headers and padded data)

    @property
    def size(self):
        return self._size

    def __enter__(self):
        self._raw = open(self.path, "rb")
        return self

    def __exit__(self, *exc_info):
        self._raw.close()

    def members(self):
        """Safe regular members in archive order, up to any damage; unsafe ones go to ``self.unsafe``."""
        view = _RegionFile(self._raw, self._offset, self._size)
        try:
            tar = tarfile.open(fileobj=view, mode="r:")
        except tarfile.TarError as error:
            raise tarfile.ReadError(f"{self.path} at byte {self._offset}: not a readable tar ({error})") from None
        refs = []
        while self.damage is None:
            start = tar.offset
            try:
                info = tar.next()
            except tarfile.TarError as error:
                self.damage = Damage(start, f"unreadable after byte {start} ({error})", cut=True)
                break
            if info is None:
                self.damage = self._end_damage(view, tar.offset)
                break
            if info.offset_data + info.size > self._size:
                self.damage = Damage(info.offset, f"cut short in the data of {info.name!r}", cut=True)
                break
            reason = unsafe_reason(info)
            if reason:
                self.unsafe.append(UnsafeMember(info.name, reason))
            elif info.isreg():
                refs.append(MemberRef(info.name, self._offset + info.offset_data, info.size))
            self.listed_bytes = tar.offset
        return refs

    def _end_damage(self, view, offset):
        """None when ``offset`` holds the end-of-archive block, else the Damage found there."""
        view.seek(offset)
        block = view.read(_BLOCK)
        if len(block) < _BLOCK:
            return Damage(offset, f"ends at byte {offset} without the end-of-archive blocks "
                                  "(cut at a member boundary)", cut=True)
        if block.strip(b"\0"):
            return Damage(offset, f"broken member header at byte {offset}", cut=False)
        return None

    def read(self, ref):
        """The bytes of one member listed by ``members()`` (of this or an earlier region)."""
        self._raw.seek(ref.offset)
        data = self._raw.read(ref.size)
        if len(data) != ref.size:
            raise tarfile.ReadError(f"{self.path}: member {ref.name} is cut short ({len(data)} of {ref.size} bytes)")
        return data


def _all(_name):
    return True


def iter_stream(fileobj, unsafe, wanted=_all, max_bytes=MAX_SIDE_MEMBER_BYTES):
    """Yields (name, data) for each safe regular file of a tar stream that ``wanted(name)`` accepts.

    ``fileobj`` may be gzip-compressed and need not be seekable. Members not
    wanted are skipped unread; wanted ones above ``max_bytes``, and unsafe
    ones, are appended to the list ``unsafe``. A damaged stream raises
    tarfile.ReadError.
    """
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                reason = unsafe_reason(info)
                if reason:
                    unsafe.append(UnsafeMember(info.name, reason))
                elif not info.isreg() or not wanted(info.name):
                    continue
                elif info.size > max_bytes:
                    unsafe.append(UnsafeMember(info.name, _too_large(info.size, max_bytes)))
                else:
                    yield info.name, tar.extractfile(info).read()
    except _STREAM_ERRORS as error:
        raise tarfile.ReadError(f"not a readable tar or tar.gz, or cut short ({error or type(error).__name__})") \
            from None


def _is_tar_name(name):
    return name.endswith((".tar", ".tar.gz", ".tgz"))


def iter_nested_streams(path, unsafe, wanted=_all, max_bytes=MAX_SIDE_MEMBER_BYTES):
    """Yields (outer_name, inner_name, data) for tars (maybe .tar.gz) inside a tar (maybe .tar.gz).

    Members of the outer archive that are not tars themselves are yielded with
    ``inner_name`` None, so callers can also read flat archives. ``wanted``
    and ``max_bytes`` apply to the files yielded, as in ``iter_stream``. A
    damaged inner archive is reported in ``unsafe`` with the members read
    before the damage kept; a damaged outer archive raises tarfile.ReadError
    naming ``path``.
    """
    try:
        with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as outer:
            for info in outer:
                reason = unsafe_reason(info)
                if reason:
                    unsafe.append(UnsafeMember(info.name, reason))
                elif not info.isreg():
                    continue
                elif _is_tar_name(info.name):
                    yield from _inner_stream(outer.extractfile(info), info.name, unsafe, wanted, max_bytes)
                elif not wanted(info.name):
                    continue
                elif info.size > max_bytes:
                    unsafe.append(UnsafeMember(info.name, _too_large(info.size, max_bytes)))
                else:
                    yield info.name, None, outer.extractfile(info).read()
    except _STREAM_ERRORS as error:
        raise tarfile.ReadError(f"{path}: not a readable tar or tar.gz, or cut short "
                                f"({error or type(error).__name__})") from None


def _inner_stream(fileobj, outer_name, unsafe, wanted, max_bytes):
    inner_unsafe = []
    try:
        for inner_name, data in iter_stream(fileobj, inner_unsafe, wanted, max_bytes):
            yield outer_name, inner_name, data
    except tarfile.ReadError as error:
        unsafe.append(UnsafeMember(outer_name, f"damaged archive, the members after the damage are left out: "
                                               f"{error}"))
    unsafe.extend(UnsafeMember(f"{outer_name}/{m.name}", m.reason) for m in inner_unsafe)


def read_regular_file(path, max_bytes):
    """The bytes of ``path``, if it is a regular file (not a link) of at most ``max_bytes``.

    Raises UnsafeFileError for a symlink, a FIFO, a device, a folder or a file
    too large; the open never follows a link and never blocks on a FIFO.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path}: a symbolic link; ignored") from None
        if error.errno == errno.EISDIR:
            raise UnsafeFileError(f"{path}: a folder, not a file; ignored") from None
        raise
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise UnsafeFileError(f"{path}: not a regular file (a FIFO, device or folder); ignored")
        if status.st_size > max_bytes:
            raise UnsafeFileError(f"{path}: {_too_large(status.st_size, max_bytes)}")
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise UnsafeFileError(f"{path}: {_too_large(len(data), max_bytes)}")
    return data


def base_name(member_name):
    """The last path component of a member name (tar names always use '/')."""
    return posixpath.basename(member_name.replace("\\", "/"))
