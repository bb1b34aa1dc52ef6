"""PNG / JPEG / TIFF frames (8 and 16 bit) and the crop/resize policy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from medsynth.data.images import ImageRejected, probe_image, quantise, read_image, sniff, square_resize

LIMIT = 1 << 30


def encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def ramp8():
    return np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))


def test_png8_and_tiff8_exact_at_native_size(ramp8):
    for fmt in ("PNG", "TIFF"):
        d = read_image(encode(ramp8, fmt), 64, LIMIT)
        assert d.bits == 8 and d.frames.shape == (1, 64, 64)
        np.testing.assert_array_equal(quantise(d.frames, np.dtype(np.uint8))[0], ramp8)


def test_16_bit_png_and_tiff(ramp8):
    arr = (ramp8.astype(np.uint16) * 257 + 3).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        data = encode(arr, fmt)
        assert probe_image(data, LIMIT) == 16
        d = read_image(data, 64, LIMIT)
        assert d.bits == 16
        np.testing.assert_array_equal(quantise(d.frames, np.dtype(np.uint16))[0], arr)


def test_jpeg_and_rgb(ramp8):
    d = read_image(encode(ramp8, "JPEG", quality=95), 64, LIMIT)
    assert np.abs(d.frames[0] * 255 - ramp8).mean() < 2
    rgb = np.stack([ramp8, ramp8, ramp8], axis=-1)
    np.testing.assert_allclose(read_image(encode(rgb, "PNG"), 64, LIMIT).frames[0], ramp8 / 255.0, atol=1e-5)


def test_multipage_tiff_is_a_loop(ramp8):
    pages = [Image.fromarray(ramp8), Image.fromarray(255 - ramp8), Image.fromarray(ramp8 // 2)]
    buf = io.BytesIO()
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    d = read_image(buf.getvalue(), 32, LIMIT)
    assert d.frames.shape == (3, 32, 32)
    assert d.frames[1].mean() > d.frames[2].mean()


def test_square_resize_policy():
    # Centre crop of a wide frame: the outer columns are cut, the middle square stays.
    frame = np.zeros((40, 100), np.float32)
    frame[:, 30:70] = 1.0
    np.testing.assert_array_equal(square_resize(frame, 40), np.ones((40, 40), np.float32))
    # Anti-aliased shrink: a fine checkerboard averages to grey, not to aliasing stripes.
    checker = (np.indices((256, 256)).sum(axis=0) % 2).astype(np.float32)
    small = square_resize(checker, 32)
    assert small.shape == (32, 32) and np.abs(small - 0.5).max() < 0.05
    assert square_resize(np.random.default_rng(0).random((50, 50)), 64).min() >= 0.0


def test_bad_images_rejected(ramp8):
    data = encode(ramp8, "PNG")
    with pytest.raises(ImageRejected, match="truncated|corrupt|readable"):
        read_image(data[: len(data) // 2], 32, LIMIT)
    with pytest.raises(ImageRejected):
        read_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 32, LIMIT)
    with pytest.raises(ImageRejected, match="over the limit"):
        read_image(encode(np.zeros((2000, 2000), np.uint8), "PNG"), 32, 1 << 20)


def test_sniff():
    assert sniff(encode(np.zeros((4, 4), np.uint8), "PNG")) == "png"
    assert sniff(encode(np.zeros((4, 4), np.uint8), "JPEG")) == "jpeg"
    assert sniff(encode(np.zeros((4, 4), np.uint8), "TIFF")) == "tiff"
    assert sniff(b"\0" * 128 + b"DICM") == "dicom"
    assert sniff(b"hello") is None
