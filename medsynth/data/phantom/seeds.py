"""The phantom's random streams: every decision draws from a stream of its own, keyed by seed and index.

Adding a decision to one stage does not shift the numbers of another, and frame i of a data set is
a pure function of (size, seed, i).
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import ConfigError

PATIENT, LOOP, FRAME, BODY = 1, 2, 3, 4  # stream tags


def rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, tag, index]))


def check_seed(seed: int) -> int:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_positive(value: int, flag: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")
    return int(value)
