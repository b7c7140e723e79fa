"""bwtf.data.images: images are judged by content and re-encoded only when they must be."""
import io

import numpy as np
import pytest
import tensorflow as tf

from bwtf.data import images


def _rgb_pixels(height=24, width=32):
    rows = np.linspace(0, 255, height, dtype=np.uint8)[:, None, None]
    cols = np.linspace(255, 0, width, dtype=np.uint8)[None, :, None]
    return np.concatenate([np.broadcast_to(rows, (height, width, 1)), np.broadcast_to(cols, (height, width, 1)),
                           np.full((height, width, 1), 128, np.uint8)], axis=-1)


def _jpeg(pixels):
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def _noise_png():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return tf.io.encode_png(noise).numpy()


def _cmyk_jpeg():
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes the CMYK JPEG fixture")
    buffer = io.BytesIO()
    pil.fromarray(_rgb_pixels()).convert("CMYK").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _decode(jpeg):
    return tf.io.decode_jpeg(jpeg, channels=3).numpy().astype(int)


def test_rgb_jpeg_is_stored_byte_for_byte():
    data = _jpeg(_rgb_pixels())
    stored = images.to_storable_jpeg(data)
    assert stored.jpeg == data and stored.conversion == ""
    assert (stored.width, stored.height) == (32, 24)


def test_real_jpegs_are_kept_and_grayscale_decodes_to_three_channels(imagenet_samples_dir):
    grayscale = 0
    for path in sorted(imagenet_samples_dir.glob("*.JPEG")):
        data = path.read_bytes()
        stored = images.to_storable_jpeg(data)
        assert stored.jpeg == data, path.name
        decoded = tf.io.decode_jpeg(stored.jpeg, channels=3)
        assert decoded.shape == (stored.height, stored.width, 3), path.name
        grayscale += images.inspect(data).channels == 1
    assert grayscale == 2  # the samples' README: 2 of the 52 are grayscale


def test_cmyk_jpeg_becomes_rgb_jpeg_with_the_same_colours():
    stored = images.to_storable_jpeg(_cmyk_jpeg())
    assert "CMYK" in stored.conversion
    assert images.inspect(stored.jpeg).channels == 3
    assert np.abs(_decode(stored.jpeg) - _rgb_pixels().astype(int)).mean() < 12


@pytest.mark.parametrize("encode", [tf.io.encode_png, lambda p: tf.io.encode_png(p[..., :1])], ids=["rgb", "gray"])
def test_png_named_jpeg_becomes_jpeg(encode):
    pixels = _rgb_pixels()
    stored = images.to_storable_jpeg(encode(pixels).numpy())
    assert stored.conversion == "PNG re-encoded as RGB JPEG"
    assert stored.jpeg.startswith(b"\xff\xd8")
    assert _decode(stored.jpeg).shape == (24, 32, 3)


@pytest.mark.parametrize("damage, reason", [
    (lambda jpeg: b"", "empty"),
    (lambda jpeg: jpeg[: len(jpeg) // 2], "truncated"),
    (lambda jpeg: jpeg[:100], "truncated"),
    (lambda jpeg: b"<html>not found</html>" * 20, "not a JPEG, PNG"),
    (lambda jpeg: b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "PNG .* no IHDR"),
    (lambda jpeg: _noise_png()[:3000], "could not be decoded"),
    (lambda jpeg: b"\xff\xd8\xff\xe0\x00\x04ab\xff\xda\x00\x02\xff\xd9", "no frame header"),
], ids=["empty", "half", "header-only", "html", "png-header", "png-cut", "no-frame"])
def test_damaged_images_are_refused_with_a_reason(damage, reason):
    with pytest.raises(images.BadImageError, match=reason):
        images.to_storable_jpeg(damage(_jpeg(_rgb_pixels())))
