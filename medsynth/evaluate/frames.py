"""The one check every metric applies to its input frames.

Metrics take what the data pipeline and the generator produce: uint8 frames
(0..255) or float frames in [-1, 1] (generator output), shaped [n, H, W] or
[n, H, W, 1]. Everything else is refused here, once, with a message that
says what was passed.
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import DataError
from medsynth.pictures import to_uint8


def as_frames(images: np.ndarray, name: str = "frames", min_count: int = 1) -> np.ndarray:
    """Return uint8 [n, H, W]; refuse colour, empty or out-of-range input with a DataError."""
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{name}: expected grey frames [n, H, W] or [n, H, W, 1], got shape {arr.shape}")
    if arr.shape[0] < min_count:
        raise DataError(f"{name}: need at least {min_count} frames, got {arr.shape[0]}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"{name}: expected uint8 (0..255) or float in [-1, 1], got dtype {arr.dtype}")
        if arr.size and (not np.isfinite(arr).all() or arr.min() < -1.01 or arr.max() > 1.01):
            raise DataError(f"{name}: float frames must be finite and in [-1, 1] (generator output); "
                            "pass uint8 for 0..255 images")
    return to_uint8(arr)


def same_size(real: np.ndarray, fake: np.ndarray) -> None:
    """Metrics compare like with like: real and generated frames must have the same H x W."""
    if real.shape[1:] != fake.shape[1:]:
        raise DataError(f"real frames are {real.shape[1]}x{real.shape[2]} but generated frames are "
                        f"{fake.shape[1]}x{fake.shape[2]}; evaluate at the generator's image size")
