"""The one rule for a frame's side, shared by the phantom, prepare, the models and the train config.

The generator doubles a 4×4 map once per level, so a side is a power of two; 8 is the smallest
that leaves it a level, 1024 the largest anything here was built for.
"""

from __future__ import annotations

from medsynth.errors import ConfigError

MIN_SIZE, MAX_SIZE = 8, 1024


def check_size(size: object, flag: str = "--image-size") -> int:
    """`size` as an int if it is a power of two in [MIN_SIZE, MAX_SIZE], else a ConfigError naming `flag`."""
    if not isinstance(size, int) or isinstance(size, bool):
        try:  # numpy integers
            import numpy as np

            if not isinstance(size, np.integer):
                raise TypeError
            size = int(size)
        except TypeError:
            raise ConfigError(f"{flag} must be an integer, got {size!r}") from None
    if not (MIN_SIZE <= size <= MAX_SIZE) or size & (size - 1):
        raise ConfigError(
            f"{flag} {size} is not a power of two between {MIN_SIZE} and {MAX_SIZE} "
            "(the generator doubles a 4x4 map once per level: use e.g. 32, 64, 128 or 256)"
        )
    return size
