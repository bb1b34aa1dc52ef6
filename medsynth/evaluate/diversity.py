"""Diversity and mode collapse: MS-SSIM between random pairs of frames, generated vs real.

A generator that collapses produces frames that look alike, so the mean
MS-SSIM of random pairs of its frames rises above that of random pairs of
real frames (Odena et al. 2017 used this to detect collapse). The real value
is the reference: angiography frames of one data set are similar to each
other too, so an absolute threshold alone would misfire.

Collapse rule (`collapse_alarm`): the alarm is raised when
  ms_ssim_fake >= ms_ssim_real + margin          (default margin 0.1), or
  ms_ssim_fake >= absolute while ms_ssim_real < absolute   (default absolute 0.9).
The second arm catches near-identical output even when the real set is
diverse enough that "real + margin" would lie above 1; when real frames are
themselves that similar (>= absolute), only the relative arm applies.

MS-SSIM is TensorFlow's `tf.image.ssim_multiscale` arithmetic (11-px Gaussian
window, sigma 1.5, the 5 power factors of Wang et al. 2003), run in numpy. Each scale halves the
frame and the window must fit in the smallest one, so small frames get fewer
scales: the largest L <= 5 with size / 2^(L-1) >= 11 (64 px: 3 scales,
32 px: 2, 256 px: 5), with the first L power factors renormalised to sum to 1
so that values stay on the same 0..1 scale. Below 11 px the window shrinks to
the frame (sigma scaled alike), with one scale.
"""

from __future__ import annotations

import numpy as np

from medsynth.errors import ConfigError, DataError
from medsynth.evaluate.frames import as_frames
from medsynth.progress import Progress

POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11
FILTER_SIGMA = 1.5


def ms_ssim_settings(size: int) -> tuple[tuple[float, ...], int, float]:
    """(power factors, filter size, filter sigma) that fit frames of `size` px (see module doc)."""
    if size < 1:
        raise DataError(f"MS-SSIM: frame size must be >= 1, got {size}")
    if size < FILTER_SIZE:
        return (1.0,), size, FILTER_SIGMA * size / FILTER_SIZE
    levels = 1
    while levels < len(POWER_FACTORS) and size // 2**levels >= FILTER_SIZE:
        levels += 1
    w = np.asarray(POWER_FACTORS[:levels])
    return tuple(float(x) for x in w / w.sum()), FILTER_SIZE, FILTER_SIGMA


def ms_ssim(a: np.ndarray, b: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """MS-SSIM of each pair (a[i], b[i]) of grey frames; 1 for identical frames.

    The arithmetic of `tf.image.ssim_multiscale` (the tests hold the two
    together), in numpy with a separable window: TF's 11x11 depthwise
    convolution costs ~15 ms of CPU per 64-px pair here.
    """
    a = as_frames(a, "MS-SSIM frames a")
    b = as_frames(b, "MS-SSIM frames b")
    if a.shape != b.shape:
        raise DataError(f"MS-SSIM compares pairs: got {a.shape} and {b.shape}")
    powers, filter_size, sigma = ms_ssim_settings(min(a.shape[1:]))
    taps = np.exp(-0.5 * np.square(np.arange(filter_size) - (filter_size - 1) / 2.0) / sigma**2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = np.empty(len(a))
    for s in range(0, len(a), batch_size):
        x = a[s : s + batch_size].astype(np.float32) / np.float32(255.0)
        y = b[s : s + batch_size].astype(np.float32) / np.float32(255.0)
        terms = []
        for k in range(len(powers)):
            if k > 0:
                x, y = _halve(x), _halve(y)
            ssim, cs = _ssim(x, y, taps)
            terms.append(np.maximum(cs, 0.0))
        terms[-1] = np.maximum(ssim, 0.0)  # the coarsest scale contributes luminance too
        weighted = [t ** np.float32(p) for t, p in zip(terms, powers, strict=True)]
        out[s : s + batch_size] = np.prod(weighted, axis=0)
    return out


def _halve(x: np.ndarray) -> np.ndarray:
    """2x2 average pooling; odd sizes are first padded by repeating the last row/column (TF's SYMMETRIC)."""
    h, w = x.shape[1:]
    if h % 2 or w % 2:
        x = np.pad(x, ((0, 0), (0, h % 2), (0, w % 2)), mode="symmetric")
    return (x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) * np.float32(0.25)


def _ssim(x: np.ndarray, y: np.ndarray, taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean SSIM and mean contrast-structure per pair, Gaussian window, 'valid' borders, data range 1."""
    c1, c2 = np.float32(0.01**2), np.float32(0.03**2)

    def blur(z: np.ndarray) -> np.ndarray:
        n = len(taps)
        h, w = z.shape[1] - n + 1, z.shape[2] - n + 1
        t = sum(taps[i] * z[:, i : i + h, :] for i in range(n))
        return sum(taps[i] * t[:, :, i : i + w] for i in range(n))

    mx, my = blur(x), blur(y)
    num0 = 2.0 * mx * my
    den0 = mx * mx + my * my
    luminance = (num0 + c1) / (den0 + c1)
    cs = (2.0 * blur(x * y) - num0 + c2) / (blur(x * x + y * y) - den0 + c2)
    return (luminance * cs).mean(axis=(1, 2)), cs.mean(axis=(1, 2))


def random_pairs(n: int, num_pairs: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    """`num_pairs` seeded pairs (i, j) of distinct frame indices."""
    if n < 2:
        raise DataError(f"MS-SSIM diversity needs at least 2 frames, got {n}")
    rng = np.random.default_rng([seed, stream, 0x55])
    i = rng.integers(0, n, num_pairs)
    j = (i + rng.integers(1, n, num_pairs)) % n
    return i, j


def mean_pairwise_ms_ssim(frames: np.ndarray, num_pairs: int = 256, seed: int = 0, stream: int = 0,
                          batch_size: int = 256, progress: bool = True, desc: str = "MS-SSIM") -> float:
    """Mean MS-SSIM over random pairs of distinct frames of one set: high = alike = low diversity."""
    frames = as_frames(frames, desc, min_count=2)
    if num_pairs < 1:
        raise ConfigError(f"MS-SSIM: num_pairs must be >= 1, got {num_pairs}")
    i, j = random_pairs(len(frames), num_pairs, seed, stream)
    values = np.empty(num_pairs)
    bar = Progress(num_pairs, desc, unit="pair") if progress else None
    try:
        for s in range(0, num_pairs, batch_size):
            sl = slice(s, s + batch_size)
            values[sl] = ms_ssim(frames[i[sl]], frames[j[sl]], batch_size)
            if bar is not None:
                bar.update(len(values[sl]))
    finally:
        if bar is not None:
            bar.close()
    return float(values.mean())


def collapse_alarm(ms_ssim_fake: float, ms_ssim_real: float, margin: float = 0.1,
                   absolute: float = 0.9) -> bool:
    """True when generated frames are much more alike than real ones (rule in the module doc)."""
    if margin < 0 or not 0 < absolute <= 1:
        raise ConfigError(f"collapse margin must be >= 0 and absolute threshold in (0, 1], "
                          f"got margin={margin}, absolute={absolute}")
    relative = ms_ssim_fake >= ms_ssim_real + margin
    near_identical = ms_ssim_fake >= absolute and ms_ssim_real < absolute
    return bool(relative or near_identical)


def diversity(real: np.ndarray, fake: np.ndarray, num_pairs: int = 256, seed: int = 0,
              margin: float = 0.1, absolute: float = 0.9, batch_size: int = 256,
              progress: bool = True) -> dict[str, float | bool]:
    """{'ms_ssim_real', 'ms_ssim_fake', 'collapse'} for one real and one generated set."""
    real_v = mean_pairwise_ms_ssim(real, num_pairs, seed, 1, batch_size, progress, "MS-SSIM real")
    fake_v = mean_pairwise_ms_ssim(fake, num_pairs, seed, 2, batch_size, progress, "MS-SSIM generated")
    return {"ms_ssim_real": real_v, "ms_ssim_fake": fake_v,
            "collapse": collapse_alarm(fake_v, real_v, margin, absolute)}
