"""Judges archive images by their content and makes each one a storable RGB JPEG.

ImageNet's archives name every file ``.JPEG``, yet a few hold CMYK JPEGs or
PNGs, and any archive can hold truncated or empty files. Instead of a list of
known file names, this module reads the bytes: the JPEG marker segments (up to
the start of the scan) or the PNG/GIF/BMP header. It re-encodes only when the
bytes cannot be stored as they are (CMYK or YCCK JPEG, anything not JPEG); the
common case keeps the original bytes untouched and costs a header parse.

Deliberately left out: a full decode of every JPEG. Damage inside the
entropy-coded data of a structurally complete JPEG is not detected here (the
decoder at training time conceals it); an empty, truncated or unrecognisable
file is. Grayscale JPEGs are stored as they are: the TFDS Image feature decodes
them to 3 channels.
"""
import dataclasses
import struct

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers that carry the image size and component count
# (baseline, extended, progressive, lossless, arithmetic variants).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xD8)) | {0x01}
_START_OF_SCAN = 0xDA
REENCODE_QUALITY = 95
# A header may claim any size: a 633-byte JPEG can declare 50000 x 50000
# pixels, which TensorFlow refuses to decode at training time ("Image too
# large"). Pillow's decompression-bomb limit; ImageNet's largest images are
# far below it.
MAX_PIXELS = 89_478_485


class BadImageError(ValueError):
    """The bytes are not an image that can be stored (empty, truncated, unknown)."""


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What the header says: format ("jpeg", "png", "gif", "bmp"), size, channels."""

    format: str
    width: int
    height: int
    channels: int


@dataclasses.dataclass(frozen=True)
class StorableImage:
    """JPEG bytes ready for the dataset; ``conversion`` names any re-encoding done."""

    jpeg: bytes
    width: int
    height: int
    conversion: str  # "" when the original bytes are stored unchanged


def _jpeg_info(data):
    """Walks the JPEG marker segments up to the scan; raises BadImageError."""
    position = 2
    frame = None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise BadImageError(f"JPEG marker expected at byte {position}, found 0x{data[position]:02x}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _SOF_MARKERS and position + 10 <= len(data):
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            frame = (width, height, data[position + 9])
        if marker == _START_OF_SCAN:
            break
        position += 2 + length
    else:
        raise BadImageError(f"JPEG ends after {len(data)} bytes, before its image data starts (truncated)")
    if frame is None:
        raise BadImageError("JPEG has no frame header (SOF), so its size is unknown")
    # Entropy-coded data never holds FF D9 (FF is byte-stuffed), so an EOI
    # after the scan start marks the end whatever trailing bytes follow it.
    if data.rfind(_JPEG_EOI, position) < 0:
        raise BadImageError(f"JPEG of {len(data)} bytes has no end-of-image marker (truncated)")
    width, height, channels = frame
    return ImageInfo("jpeg", width, height, channels)


def _png_info(data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise BadImageError(f"PNG of {len(data)} bytes has no IHDR header (truncated)")
    width, height = struct.unpack(">II", data[16:24])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(data[25], 0)
    return ImageInfo("png", width, height, channels)


def inspect(data):
    """Returns the ImageInfo of encoded image bytes, or raises BadImageError."""
    if not data:
        raise BadImageError("empty file (0 bytes)")
    if data.startswith(_JPEG_SOI):
        info = _jpeg_info(data)
    elif data.startswith(_PNG_SIGNATURE):
        info = _png_info(data)
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        info = ImageInfo("gif", width, height, 3)
    elif data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        info = ImageInfo("bmp", width, abs(height), 3)
    else:
        raise BadImageError(f"not a JPEG, PNG, GIF or BMP image (starts with {data[:8]!r})")
    if info.width <= 0 or info.height <= 0:
        raise BadImageError(f"{info.format.upper()} header gives an empty size {info.width}x{info.height}")
    if info.width * info.height > MAX_PIXELS:
        raise BadImageError(f"{info.format.upper()} header declares {info.width}x{info.height} pixels, above the "
                            f"limit of {MAX_PIXELS} (a decompression bomb, or an image training could not decode)")
    return info


def _reencode_as_rgb_jpeg(data, what):
    """Decodes anything TensorFlow can read and encodes it as an RGB JPEG."""
    import tensorflow as tf  # Only the rare images that need it pay for the import.

    try:
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.io.encode_jpeg(pixels, format="rgb", quality=REENCODE_QUALITY).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BadImageError(f"{what} could not be decoded: {message}") from None


def to_storable_jpeg(data):
    """Returns a StorableImage for ``data``; raises BadImageError when it is damaged.

    JPEGs with 1 or 3 components are returned byte for byte. CMYK/YCCK JPEGs
    and other formats are decoded and re-encoded as RGB JPEG at quality 95.
    """
    info = inspect(data)
    if info.format == "jpeg" and info.channels in (1, 3):
        return StorableImage(data, info.width, info.height, "")
    if info.format == "jpeg":
        conversion = f"{info.channels}-component JPEG (CMYK/YCCK) re-encoded as RGB JPEG"
    else:
        conversion = f"{info.format.upper()} re-encoded as RGB JPEG"
    jpeg = _reencode_as_rgb_jpeg(data, f"{info.format.upper()} with {info.channels} channels")
    return StorableImage(jpeg, info.width, info.height, conversion)
