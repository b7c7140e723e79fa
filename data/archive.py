"""Reads the members of (nested) tar archives without extracting anything.

ImageNet ships as tars of tars: ``ILSVRC2012_img_train.tar`` holds one
``n01440764.tar`` per synset (about 150 MB each), and ``Annotation.tar.gz``
holds one ``.tar.gz`` per synset. Two ways of reading are offered:

* ``TarRegion``: random access to an *uncompressed* tar, either a whole file
  or a member of an outer tar addressed by (offset, size). Only the 512-byte
  headers are read to list the members; each member's bytes are then read with
  one seek. A synset tar is never loaded into memory, and any slice of it can
  be read by a different process (this is how parallel builds split work).
* ``iter_stream``: one forward pass over a possibly compressed tar stream
  (``r|*``), for ``.tar.gz`` files that cannot be seeked, nested or not.

Archives are untrusted: member names never become filesystem paths, nothing
is written to disk, and links, devices, sparse files and absolute or ``..``
names are skipped and returned as ``UnsafeMember`` records for the report.
Deliberately left out: writing tars (see ``bwtf.data.sample_archive``).
"""
import dataclasses
import io
import os
import posixpath
import tarfile


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


def unsafe_reason(info):
    """Why a TarInfo must not be read, or "" when it is a safe regular file or directory."""
    name = info.name
    if info.issym() or info.islnk():
        return f"link to {info.linkname!r} ignored"
    if info.ischr() or info.isblk() or info.isfifo():
        return "device or FIFO member ignored"
    if info.issparse():
        return "sparse member ignored"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute member name ignored"
    if ".." in name.replace("\\", "/").split("/"):
        return "member name with '..' ignored"
    if not (info.isreg() or info.isdir()):
        return f"member of tar type {info.type!r} ignored"
    return ""


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
    """

    def __init__(self, path, offset=0, size=None):
        self.path, self._offset = os.fspath(path), offset
        self._size = os.path.getsize(self.path) - offset if size is None else size
        self._raw = None
        self.unsafe = []

    def __enter__(self):
        self._raw = open(self.path, "rb")
        return self

    def __exit__(self, *exc_info):
        self._raw.close()

    def members(self):
        """Safe regular members in archive order; unsafe ones go to ``self.unsafe``."""
        view = _RegionFile(self._raw, self._offset, self._size)
        try:
            tar = tarfile.open(fileobj=view, mode="r:")
            infos = tar.getmembers()
        except tarfile.TarError as error:
            raise tarfile.ReadError(f"{self.path} at byte {self._offset}: not a readable tar ({error})") from None
        refs = []
        for info in infos:
            reason = unsafe_reason(info)
            if reason:
                self.unsafe.append(UnsafeMember(info.name, reason))
            elif info.isreg():
                refs.append(MemberRef(info.name, self._offset + info.offset_data, info.size))
        return refs

    def read(self, ref):
        """The bytes of one member listed by ``members()`` (of this or an earlier region)."""
        self._raw.seek(ref.offset)
        data = self._raw.read(ref.size)
        if len(data) != ref.size:
            raise tarfile.ReadError(f"{self.path}: member {ref.name} is cut short ({len(data)} of {ref.size} bytes)")
        return data


def iter_stream(fileobj, unsafe):
    """Yields (name, data) for each safe regular file of a tar stream, in order.

    ``fileobj`` may be gzip-compressed and need not be seekable. Skipped members
    are appended to the list ``unsafe``.
    """
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for info in tar:
            reason = unsafe_reason(info)
            if reason:
                unsafe.append(UnsafeMember(info.name, reason))
            elif info.isreg():
                yield info.name, tar.extractfile(info).read()


def iter_nested_streams(path, unsafe):
    """Yields (outer_name, inner_name, data) for tars (maybe .tar.gz) inside a tar (maybe .tar.gz).

    Members of the outer archive that are not tars themselves are yielded with
    ``inner_name`` None, so callers can also read flat archives.
    """
    with open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as outer:
        for info in outer:
            reason = unsafe_reason(info)
            if reason:
                unsafe.append(UnsafeMember(info.name, reason))
                continue
            if not info.isreg():
                continue
            if info.name.endswith((".tar", ".tar.gz", ".tgz")):
                inner_unsafe = []
                for inner_name, data in iter_stream(outer.extractfile(info), inner_unsafe):
                    yield info.name, inner_name, data
                unsafe.extend(UnsafeMember(f"{info.name}/{m.name}", m.reason) for m in inner_unsafe)
            else:
                yield info.name, None, outer.extractfile(info).read()


def base_name(member_name):
    """The last path component of a member name (tar names always use '/')."""
    return posixpath.basename(member_name.replace("\\", "/"))
