"""DICOM frames through pydicom 3, with the display pipeline the modality intends.

Per frame: stored values → Modality LUT / Rescale Slope+Intercept (`pydicom.pixels.apply_modality_lut`)
→ VOI LUT or Window Centre/Width, first view (`pydicom.pixels.apply_voi_lut`) → [0, 1]:
- with a VOI transform, [0, 1] spans that transform's output range (as pydicom computes it);
- without one, it spans the min–max of the whole file, so every frame of a cine loop shares one
  mapping and the loop's brightness stays consistent;
- MONOCHROME1 is inverted afterwards so that contrast-filled vessels are dark in every stored frame;
- colour (RGB, YBR — converted to RGB by pydicom — and PALETTE COLOR) becomes ITU-R 601 luma.
Then the crop/resize policy of `images.square_resize`.

Compressed transfer syntaxes decode through pydicom's plugins (pylibjpeg, -libjpeg, -openjpeg, -rle).
Before any pixel is decoded, the declared rows × columns × frames × samples × bytes is checked
against a memory limit, non-image objects (RT plans, structured reports, …) are rejected, and
`BurnedInAnnotation = YES` files are quarantined (identifiers in the pixels cannot be removed here).
Rejection reasons never contain header values other than sizes and standard class names.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, iter_pixels

from medsynth.data import deid
from medsynth.data.images import Decoded, ImageRejected, square_resize, to_gray

MONO = ("MONOCHROME1", "MONOCHROME2")


class DicomRejected(ImageRejected):
    """A DICOM input that cannot become frames; `str(e)` is a PHI-free reason."""


@dataclass
class Header:
    """What prepare needs to know about a DICOM file before decoding it (no identifiers in clear)."""

    bits: int
    frames: int
    patient: str | None  # pre-hashes (deid.prehash); salted later by the main process
    study: str | None
    series: str | None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence pydicom while it reads untrusted headers: its validation warnings and log lines quote the
    offending value ("Invalid value for VR DA: '...'"), which may be a name or a birth date."""
    config = pydicom.config.settings
    mode = config.reading_validation_mode
    logger = logging.getLogger("pydicom")
    disabled = logger.disabled
    config.reading_validation_mode = pydicom.config.IGNORE
    logger.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.reading_validation_mode = mode
        logger.disabled = disabled


def read_dataset(data: bytes, pixels: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels, force=True)
    except Exception as e:  # pydicom raises many types on garbage; the reason stays generic
        raise DicomRejected(f"unreadable DICOM ({type(e).__name__})") from None


def check(ds: pydicom.Dataset, max_bytes: int) -> Header:
    """Reject non-images, burned-in annotations and oversize pixel data from the header alone."""
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        raise DicomRejected(f"not an image: {_sop_class(ds)} has no pixel module")
    if deid.burned_in_annotation(ds):
        raise DicomRejected("BurnedInAnnotation is YES: identifiers may be burned into the pixels")
    rows, cols = int(ds.Rows or 0), int(ds.Columns or 0)
    frames = _frames(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    alloc = int(ds.BitsAllocated or 0)
    if rows <= 0 or cols <= 0 or alloc <= 0 or frames <= 0:
        raise DicomRejected("image header declares no pixels")
    declared = rows * cols * frames * samples * max(1, alloc // 8)
    if declared > max_bytes:
        raise DicomRejected(
            f"declared pixel data {rows}x{cols}x{frames}x{samples} at {alloc} bit needs "
            f"{declared / 2**20:.0f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB"
        )
    bits = int(ds.get("BitsStored", alloc) or alloc)
    patient, study, series = deid.group_keys(ds)
    return Header(bits=16 if bits > 8 else 8, frames=frames, patient=patient, study=study, series=series)


def probe(data: bytes, max_bytes: int) -> Header:
    with quiet():
        return check(read_dataset(data, pixels=False), max_bytes)


def display_values(frame: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Stored values of one monochrome frame → modality LUT → VOI LUT/window (pydicom's own functions)."""
    return apply_voi_lut(apply_modality_lut(frame, ds), ds)


def voi_range(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """The output range of the file's VOI transform, or None without one.

    Computed by pushing extreme inputs through pydicom's own functions instead of re-deriving the
    standard's formulas: windowing saturates at its y_min/y_max, a VOI LUT at its table's extremes.
    """
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        out = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds)
        return float(np.min(out)), float(np.max(out))
    if "WindowCenter" in ds and "WindowWidth" in ds:
        probe_values = np.array([-1e30, 1e30])
        if ds.get("ModalityLUTSequence"):
            probe_values = np.array([-(2**31), 2**31])
        out = apply_voi_lut(probe_values, ds)
        return float(np.min(out)), float(np.max(out))
    return None


def read_dicom(data: bytes, size: int, max_bytes: int) -> Decoded:
    """Every frame of a DICOM file, in the display pipeline above, as float32 [n, size, size] in [0, 1]."""
    with quiet():
        return _read_dicom(data, size, max_bytes)


def _read_dicom(data: bytes, size: int, max_bytes: int) -> Decoded:
    ds = read_dataset(data, pixels=True)
    header = check(ds, max_bytes)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomRejected(f"not an image: {_sop_class(ds)} has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    mono = photometric in MONO
    vrange = None
    if mono:
        try:
            vrange = voi_range(ds)
        except Exception as e:
            raise DicomRejected(f"invalid VOI LUT or window ({type(e).__name__})") from None
    frames, original, lo, hi = [], [], np.inf, -np.inf
    try:
        for arr in iter_pixels(ds):
            if mono:
                values = display_values(arr, ds).astype(np.float32)
            elif photometric == "PALETTE COLOR":
                values = to_gray(apply_color_lut(arr, ds))
            else:
                values = to_gray(arr)
            if values.ndim != 2:
                raise DicomRejected(f"unexpected frame shape {values.shape}")
            if vrange is None:
                lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
            original.append(values.shape)
            frames.append(_resize_raw(values, size))
    except ImageRejected:
        raise
    except Exception as e:  # truncated data, unsupported codec, inconsistent header
        raise DicomRejected(f"pixel data cannot be decoded ({type(e).__name__})") from None
    if not frames:
        raise DicomRejected("no frames")
    if vrange is None:
        if photometric == "PALETTE COLOR" or not mono:
            depth = _colour_depth(ds, photometric)
            vrange = (0.0, float(depth))
        else:
            vrange = (lo, hi)
    a, b = vrange
    stack = np.stack(frames)
    stack = (stack - a) / (b - a) if b > a else np.zeros_like(stack)
    if photometric == "MONOCHROME1":
        stack = 1.0 - stack
    return Decoded(
        np.clip(stack, 0.0, 1.0).astype(np.float32), header.bits, "dicom", np.asarray(original, np.int64)
    )


def _resize_raw(values: np.ndarray, size: int) -> np.ndarray:
    """The crop/resize policy on un-normalised values: both are linear, so normalising after is the same
    as before, and it lets the min–max of a whole loop be known before any frame is normalised."""
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return square_resize(np.zeros_like(values), size) + lo
    unit = square_resize((values - lo) / (hi - lo), size)
    return unit * (hi - lo) + lo


def _colour_depth(ds: pydicom.Dataset, photometric: str) -> int:
    if photometric == "PALETTE COLOR":
        desc = ds.get("RedPaletteColorLookupTableDescriptor")
        return 2 ** int(desc[2]) - 1 if desc else 65535
    return 2 ** int(ds.get("BitsStored", 8) or 8) - 1


def _frames(ds: pydicom.Dataset) -> int:
    value = ds.get("NumberOfFrames", 1)
    try:
        return int(value or 1)
    except (TypeError, ValueError):
        return 1


def _sop_class(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    name = getattr(uid, "name", "") if uid is not None else ""
    if name and name != str(uid):  # a registered standard class name, not an arbitrary value
        return name
    return f"{ds.get('Modality', 'unknown')} object" if str(ds.get("Modality", "")).isalnum() else "object"
