"""PNG / JPEG / TIFF frames through Pillow, and the one crop-and-resize policy every frame goes through.

Frame policy (all sources, DICOM included):
1. intensities are mapped to [0, 1] first (here: by the container's bit depth, 8 bit → /255,
   16 bit → /65535; colour → ITU-R 601 luma; float TIFF → min–max of the file);
2. the frame is centre-cropped to a square on its shorter side (angiography detectors are square or
   nearly so; cropping keeps the anatomy at full resolution instead of padding with black);
3. it is resized to the training size with Lanczos on 32-bit floats, which is anti-aliased when
   shrinking (PIL scales the kernel support with the reduction factor), then clipped to [0, 1].
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageSequence

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff"})
LUMA = np.array([0.299, 0.587, 0.114], np.float32)
RESIZE_POLICY = (
    "centre crop to the shorter side, then Lanczos resize on float32 (anti-aliased), clip to [0, 1]"
)


class ImageRejected(Exception):
    """An input that cannot become frames; `str(e)` is a PHI-free reason for quarantine.json."""


@dataclass
class Decoded:
    """The frames of one input file, already square, resized and in [0, 1]."""

    frames: np.ndarray  # float32 [n, S, S]
    bits: int  # significant bits of the source (8 or 16; drives uint8 vs uint16 storage)
    kind: str  # "png", "jpeg", "tiff", "dicom"
    original: np.ndarray  # int [n, 2]: each frame's (height, width) before the crop: key points follow it


def sniff(head: bytes) -> str | None:
    """The format from a file's first bytes: file names are not trusted (nor logged)."""
    if len(head) >= 132 and head[128:132] == b"DICM":  # first: a DICOM preamble may look like a TIFF
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def square_resize(frame: np.ndarray, size: int) -> np.ndarray:
    """Apply the frame policy's crop and resize to one float frame in [0, 1]."""
    frame = np.asarray(frame, np.float32)
    h, w = frame.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    frame = frame[top : top + side, left : left + side]
    if side != size:
        img = Image.fromarray(np.ascontiguousarray(frame), mode="F")
        frame = np.asarray(img.resize((size, size), Image.LANCZOS), np.float32)
    return np.clip(frame, 0.0, 1.0)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Colour (secondary captures, screenshots) to luminance, keeping the value scale."""
    return rgb[..., :3].astype(np.float32) @ LUMA


def quantise(frames: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """[0, 1] floats to the stored integer type (round to nearest)."""
    top = float(np.iinfo(dtype).max)
    return np.rint(np.clip(frames, 0.0, 1.0) * top).astype(dtype)


def probe_image(data: bytes, max_bytes: int) -> int:
    """Bit depth of an image file from its header only; rejects what would not fit in `max_bytes`."""
    with _open(data) as img:
        frames = getattr(img, "n_frames", 1)
        _check_size(img, frames, max_bytes)
        return _bits(img.mode)


def read_image(data: bytes, size: int, max_bytes: int) -> Decoded:
    """Decode every frame of a PNG/JPEG/TIFF (multi-page TIFF = a loop) into the frame policy."""
    with _open(data) as img:
        kind = (img.format or "image").lower()
        frames_declared = getattr(img, "n_frames", 1)
        _check_size(img, frames_declared, max_bytes)
        bits = _bits(img.mode)
        out, original = [], []
        try:
            for page in ImageSequence.Iterator(img):
                unit = _unit(page)
                original.append(unit.shape)
                out.append(square_resize(unit, size))
        except (OSError, ValueError, SyntaxError) as e:
            raise ImageRejected(f"{kind} file is truncated or corrupt ({type(e).__name__})") from None
    if not out:
        raise ImageRejected(f"{kind} file has no frames")
    return Decoded(np.stack(out), bits, kind, np.asarray(original, np.int64))


def _open(data: bytes) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageRejected("image dimensions exceed Pillow's decompression-bomb limit") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageRejected(f"not a readable image ({type(e).__name__})") from None


def _bits(mode: str) -> int:
    return 16 if mode.startswith("I") or mode == "F" else 8


def _check_size(img: Image.Image, frames: int, max_bytes: int) -> None:
    w, h = img.size
    need = w * h * max(1, frames) * 4  # decoded as float32 on the way to the frame policy
    if w <= 0 or h <= 0:
        raise ImageRejected("image has no pixels")
    if need > max_bytes:
        raise ImageRejected(
            f"image of {w}x{h}x{frames} would need {need / 2**20:.0f} MiB decoded, "
            f"over the limit of {max_bytes / 2**20:.0f} MiB"
        )


def _unit(page: Image.Image) -> np.ndarray:
    """One decoded page mapped to [0, 1] by its container depth."""
    mode = page.mode
    if mode in ("1", "L", "P", "PA", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "L":
            return np.asarray(page, np.float32) / 255.0
        if mode == "1":
            return np.asarray(page.convert("L"), np.float32) / 255.0
        rgb = np.asarray(page.convert("RGB"), np.float32)
        return to_gray(rgb) / 255.0
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(page).astype(np.float32)
        return arr / 65535.0
    if mode == "F":
        arr = np.asarray(page, np.float32)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    raise ImageRejected(f"unsupported image mode {mode}")
