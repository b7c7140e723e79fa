"""Reads a zip archive in place, member by member: the Kaggle ImageNet download (155 GB, 1.4 M members).

``iter_directory`` streams the central directory (ZIP64 included) and yields
one small ``ZipRef`` per safe regular member; nothing else of the directory is
kept, so the caller decides how much it holds. ``read_member`` reads one
member by its local header offset with one seek: at most ``max_bytes``
compressed and ``max_bytes`` inflated bytes are in memory, and a member that
inflates beyond its declared size (a zip bomb) or fails its CRC is refused.
Any process can read any member knowing only the ZipRef, which is how the
work is split.

The zip is untrusted: a member name is only ever a string (never a path on
disk), and links, devices, FIFOs, encrypted members, absolute or ``..`` names
and unknown compression methods are skipped and reported as
``archive.UnsafeMember``. Deliberately left out: writing zips, multi-disk zips
and compression other than stored and deflate (the Kaggle zip uses deflate).
"""
import dataclasses
import os
import stat
import struct
import zlib

from bwtf.data import archive

_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory
_EOCD64_LOCATOR = struct.Struct("<IIQI")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_EOCD_SIGNATURE, _EOCD64_SIGNATURE, _LOCATOR_SIGNATURE = 0x06054B50, 0x06064B50, 0x07064B50
_CENTRAL_SIGNATURE, _LOCAL_SIGNATURE = 0x02014B50, 0x04034B50
_STORED, _DEFLATED = 0, 8
_UNIX = 3
_READ_CHUNK = 1 << 20


class ZipError(ValueError):
    """The zip cannot be read: not a zip, cut short, or its directory is damaged."""


@dataclasses.dataclass(frozen=True)
class ZipRef:
    """Where one member's bytes are: local header offset, sizes, method and CRC-32."""

    name: str
    offset: int
    compressed_size: int
    size: int
    method: int
    crc: int


def _end_records(raw, file_size):
    """(entries, directory offset, directory size) from the (ZIP64) end of central directory."""
    tail_size = min(file_size, _EOCD.size + 0xFFFF)
    raw.seek(file_size - tail_size)
    tail = raw.read(tail_size)
    position = tail.rfind(struct.pack("<I", _EOCD_SIGNATURE))
    if position < 0 or position + _EOCD.size > len(tail):
        raise ZipError("no end-of-directory record: not a zip file, or cut short")
    _, disk, _, _, entries, size, offset, _ = _EOCD.unpack_from(tail, position)
    if disk != 0:
        raise ZipError("a multi-disk zip; join its parts into one file first")
    locator = position - _EOCD64_LOCATOR.size
    if locator >= 0 and _EOCD64_LOCATOR.unpack_from(tail, locator)[0] == _LOCATOR_SIGNATURE:
        raw.seek(_EOCD64_LOCATOR.unpack_from(tail, locator)[2])
        record = raw.read(_EOCD64.size)
        if len(record) < _EOCD64.size or _EOCD64.unpack(record)[0] != _EOCD64_SIGNATURE:
            raise ZipError("its ZIP64 end-of-directory record is damaged")
        *_, entries, size, offset = _EOCD64.unpack(record)
    if offset + size > file_size:
        raise ZipError(f"its directory ends at byte {offset + size}, after the end of the file "
                       f"({file_size} bytes): cut short")
    return entries, offset, size


def _zip64_values(extra, usize, csize, offset):
    """Replaces 0xFFFFFFFF sizes and offset by the ZIP64 extra field's values, in the order the format gives."""
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        if tag == 1:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, position + 4))
            usize = next(values, usize) if usize == 0xFFFFFFFF else usize
            csize = next(values, csize) if csize == 0xFFFFFFFF else csize
            offset = next(values, offset) if offset == 0xFFFFFFFF else offset
            break
        position += 4 + length
    return usize, csize, offset


def _unsafe_reason(name, made_by, flags, method, external):
    reason = archive.unsafe_name_reason(name)
    if reason:
        return reason
    kind = stat.S_IFMT(external >> 16)
    if made_by >> 8 == _UNIX and kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        return "link, device or FIFO member ignored"
    if flags & 1:
        return "encrypted member ignored"
    if method not in (_STORED, _DEFLATED):
        return f"compression method {method} not supported; ignored"
    return ""


def _directory_records(raw, offset, size):
    """Yields (fixed fields, name bytes, extra bytes) per directory entry, reading the directory in chunks."""
    raw.seek(offset)
    buffer, position, remaining = b"", 0, size
    while True:
        if len(buffer) - position < _CENTRAL.size and remaining:
            buffer, position = buffer[position:] + raw.read(min(_READ_CHUNK, remaining)), 0
            remaining = max(0, size - raw.tell() + offset)
        if len(buffer) - position < _CENTRAL.size:
            return
        fields = _CENTRAL.unpack_from(buffer, position)
        if fields[0] != _CENTRAL_SIGNATURE:
            raise ZipError(f"its directory is damaged at byte {offset + size - remaining - len(buffer) + position}")
        end = position + _CENTRAL.size + fields[10] + fields[11] + fields[12]
        while end > len(buffer) and remaining:
            buffer, end, position = buffer[position:], end - position, 0
            buffer += raw.read(min(_READ_CHUNK, remaining))
            remaining = max(0, size - raw.tell() + offset)
        if end > len(buffer):
            raise ZipError("its directory is cut short")
        name_end = position + _CENTRAL.size + fields[10]
        yield fields, buffer[position + _CENTRAL.size : name_end], buffer[name_end : name_end + fields[11]]
        position = end


def iter_directory(path, unsafe):
    """Yields a ZipRef per safe regular member of the zip at ``path``; skipped members go to ``unsafe``.

    Raises ZipError when the zip itself cannot be read.
    """
    with open(path, "rb") as raw:
        file_size = os.fstat(raw.fileno()).st_size
        _, offset, size = _end_records(raw, file_size)
        for fields, name_bytes, extra in _directory_records(raw, offset, size):
            (_, made_by, _, flags, method, _, _, crc, csize, usize, _, _, _, _, _, external, header) = fields
            name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", errors="surrogateescape")
            if name.endswith("/"):
                continue
            reason = _unsafe_reason(name, made_by, flags, method, external)
            if reason:
                unsafe.append(archive.UnsafeMember(name, reason))
                continue
            usize, csize, header = _zip64_values(extra, usize, csize, header)
            yield ZipRef(name, header, csize, usize, method, crc)


def read_member(raw, ref, max_bytes):
    """The bytes of one member from an open binary file; ZipError when it is damaged, too large or a bomb."""
    if ref.size > max_bytes or ref.compressed_size > max_bytes:
        raise ZipError(f"{ref.size} bytes ({ref.compressed_size} compressed), above the limit of {max_bytes}")
    raw.seek(ref.offset)
    header = raw.read(_LOCAL.size)
    if len(header) < _LOCAL.size or _LOCAL.unpack(header)[0] != _LOCAL_SIGNATURE:
        raise ZipError(f"no local header at byte {ref.offset}: the zip is damaged or cut short")
        # (the directory, read first, is at the end of the file; a cut zip fails there)
    *_, name_length, extra_length = _LOCAL.unpack(header)
    raw.seek(ref.offset + _LOCAL.size + name_length + extra_length)
    packed = raw.read(ref.compressed_size)
    if len(packed) < ref.compressed_size:
        raise ZipError(f"cut short ({len(packed)} of {ref.compressed_size} bytes)")
    if ref.method == _STORED:
        data = packed
    else:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(packed, ref.size + 1)
        except zlib.error as error:
            raise ZipError(f"damaged deflate data ({error})") from None
    if len(data) != ref.size:
        raise ZipError(f"inflates to {'more' if len(data) > ref.size else 'fewer'} bytes than the {ref.size} "
                       "its header declares (damaged, or a zip bomb)")
    if zlib.crc32(data) != ref.crc:
        raise ZipError("CRC-32 mismatch: the member is damaged")
    return data
