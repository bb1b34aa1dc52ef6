"""The settings of one `prepare` step, checked before anything is read."""

from __future__ import annotations

import re
from dataclasses import dataclass

from medsynth.data.shards import DEFAULT_SHARD_BYTES
from medsynth.data.sources import Limits
from medsynth.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class PrepareConfig:
    """Settings of one prepare step; everything marked (hash) changes the content hash."""

    source: str
    out: str
    image_size: int = 256  # (hash) side of the square stored frames
    name: str | None = None  # default: "phantom" for builtin://phantom, else "dataset"
    seed: int = 0  # (hash) split order; phantom content
    val_fraction: float = 0.1  # (hash) share of patients in the validation split
    min_frames: int = 8  # fail when fewer good frames remain
    phantom_frames: int = 512  # (hash, phantom only) size of builtin://phantom
    dtype: str = "auto"  # (hash) "auto" (uint16 when any input has > 8 bits), "uint8", "uint16"
    shard_mb: int = DEFAULT_SHARD_BYTES >> 20  # (hash) target shard size
    workers: int | None = None  # decoding processes; default: all cores
    max_file_mb: int = 1024  # bytes of one input file
    max_pixels_mb: int = 1024  # declared decoded size of one input, checked before decoding
    zip_max_ratio: float = 200.0
    zip_max_total_gb: float = 64.0

    def limits(self) -> Limits:
        return Limits(
            max_file_bytes=int(self.max_file_mb) << 20,
            max_decoded_bytes=int(self.max_pixels_mb) << 20,
            zip_max_ratio=float(self.zip_max_ratio),
            zip_max_total_bytes=int(self.zip_max_total_gb * 2**30),
        )

    def validate(self) -> None:
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 4096:
            raise ConfigError(f"--image-size must be an integer between 8 and 4096, got {self.image_size!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.min_frames < 1:
            raise ConfigError(f"--min-frames must be >= 1, got {self.min_frames}")
        if self.phantom_frames < 1:
            raise ConfigError(f"--phantom-frames must be >= 1, got {self.phantom_frames}")
        if self.dtype not in ("auto", "uint8", "uint16"):
            raise ConfigError(f"dtype must be auto, uint8 or uint16, got {self.dtype!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.name is not None and not _NAME.match(self.name):
            raise ConfigError(
                f"--name {self.name!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )
