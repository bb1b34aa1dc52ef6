"""Diversity and mode collapse: how alike generated frames are, measured against how alike real ones are.

A generator that collapses produces frames that look alike, so the mean
MS-SSIM of random pairs of its frames rises above that of random pairs of
real frames (Odena et al. 2017 used this to detect collapse). The real value
is the reference: angiography frames of one data set are similar to each
other too, so an absolute threshold alone would misfire.

Collapse rule (`collapse_alarm`, which also returns the reason in words): the alarm is raised when
  (1) ms_ssim_fake >= ms_ssim_real + 0.10, or
  (2) ms_ssim_fake >= 0.90 while ms_ssim_real < 0.90, or
  (3) dup_rate_fake >= dup_rate_real + 0.30,
where dup_rate is the share of a set's frames whose nearest other frame of the same set (nearest in
pixels, judged by MS-SSIM) is near-identical, MS-SSIM >= 0.95. Arm 2 catches near-identical output
when the real set is so diverse that "real + margin" would lie above 1. Arm 3 exists because MS-SSIM
of random pairs cannot see a *handful* of modes: with k distinct frames only ~1/k of random pairs are
alike, so 8 or 16 modes raise the mean by less than the margin — but every frame then has a twin.
Consecutive cine frames are near-identical too (phantom, 32 px: MS-SSIM 0.96 on average, up to
0.996), so the real rate is the reference, and both sets must have the same size (evaluation does
that): the rate grows with how densely a set samples its loops.

Calibration (phantom, 6 seeded draws each; real = n random frames of 64 validation patients;
numbers are generated minus real, as min..max; reproduced by tests/test_metrics.py at 32 px, n = 64):

  generator stand-in                        32 px n=64     32 px n=256    64 px n=64     64 px n=256
  training frames, random subset  MS-SSIM  -0.04..+0.03   -0.02..+0.01   -0.02..+0.02   -0.02..+0.00
    (no alarm in 24/24)            dup     -0.22..+0.09   -0.07..+0.09   -0.08..+0.06   -0.09..+0.01
  4 frames repeated, noise σ 2     MS-SSIM +0.08..+0.27   +0.11..+0.27   +0.20..+0.39   +0.14..+0.24
    (alarm in 24/24)               dup     +0.72..+0.88   +0.47..+0.55   +0.86..+1.00   +0.73..+0.79
  16 frames repeated, noise σ 2    MS-SSIM +0.02..+0.08   -0.01..+0.08   +0.00..+0.08   +0.01..+0.06
    (alarm in 24/24, by arm 3)     dup     +0.72..+0.88   +0.47..+0.55   +0.86..+1.00   +0.73..+0.79
  one frame repeated, noise σ 2    MS-SSIM +0.84 or more: arms 1 and 2 (generated ≥ 0.99)

So the margins sit at ~2x (arm 1) and ~3x (arm 3) the largest difference a healthy set showed, and
below what 2-16 repeated frames give. Not caught: modes that vary more than noise of σ 8 (MS-SSIM
to their twin < 0.95) *and* number more than ~8 — that generator has some diversity, and recall and
coverage (prdc.py) are the metrics that show it. Also flagged, by design: frames drawn from only a
few cine loops (all 8 frames of n/8 loops: dup +0.32..+0.86), i.e. a generator that reproduces a few
scenes. A real set sampled that densely (dup near 1) leaves arm 3 no room; arms 1-2 still apply.

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
MARGIN, ABSOLUTE = 0.1, 0.9  # MS-SSIM arms (calibration in the module doc)
DUP_THRESHOLD, DUP_MARGIN = 0.95, 0.3  # near-duplicate arm
GROUP_THRESHOLD = 0.8  # nearest neighbours this alike are kept in one cross-validation group
SEARCH_SIZE = 64  # nearest neighbours are searched on frames box-filtered to at most this size
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
    return float(_pairs_ms_ssim(frames, i, j, batch_size, progress, desc).mean())


def _pairs_ms_ssim(frames: np.ndarray, i: np.ndarray, j: np.ndarray, batch_size: int, progress: bool,
                   desc: str) -> np.ndarray:
    """MS-SSIM of frames[i[k]] with frames[j[k]] for every k, batch by batch, with a progress bar."""
    values = np.empty(len(i))
    bar = Progress(len(i), desc, unit="pair") if progress else None
    try:
        for s in range(0, len(i), batch_size):
            sl = slice(s, s + batch_size)
            values[sl] = ms_ssim(frames[i[sl]], frames[j[sl]], batch_size)
            if bar is not None:
                bar.update(len(values[sl]))
    finally:
        if bar is not None:
            bar.close()
    return values


def nearest_neighbours(frames: np.ndarray, batch_size: int = 256, progress: bool = False,
                       desc: str = "near-duplicates") -> tuple[np.ndarray, np.ndarray]:
    """(index, MS-SSIM) of every frame's nearest other frame of the same set.

    The neighbour is the nearest by pixel distance on frames box-filtered to at most 64 px (cheap for
    thousands of frames; a near-identical frame is also the nearest in pixels), then judged by MS-SSIM.
    """
    frames = as_frames(frames, desc, min_count=2)
    small = frames.astype(np.float32)
    while max(small.shape[1:]) > SEARCH_SIZE:
        small = _halve(small)
    x = small.reshape(len(small), -1)
    sq = (x * x).sum(1)
    nearest = np.empty(len(x), np.int64)
    for s in range(0, len(x), batch_size):
        d = sq[s : s + batch_size, None] + sq[None, :] - 2.0 * (x[s : s + batch_size] @ x.T)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf  # not itself
        nearest[s : s + batch_size] = d.argmin(1)
    return nearest, _pairs_ms_ssim(frames, np.arange(len(frames)), nearest, batch_size, progress, desc)


def near_duplicate_rate(frames: np.ndarray, threshold: float = DUP_THRESHOLD, batch_size: int = 256,
                        progress: bool = False, desc: str = "near-duplicates") -> float:
    """Share of frames whose nearest other frame has MS-SSIM >= `threshold` (a near-identical twin)."""
    return float((nearest_neighbours(frames, batch_size, progress, desc)[1] >= threshold).mean())


def near_duplicate_groups(frames: np.ndarray, threshold: float = GROUP_THRESHOLD,
                          batch_size: int = 256) -> np.ndarray:
    """Group id per frame: frames chained by nearest neighbours with MS-SSIM >= `threshold` share one.

    Cine loops come out as (parts of) one group each, so cross-validation can keep a loop's frames
    on one side of a split (the linear probe does; see probe.py for the measured effect).
    """
    nearest, value = nearest_neighbours(frames, batch_size)
    parent = np.arange(len(nearest))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    for i in np.flatnonzero(value >= threshold):
        parent[root(int(i))] = root(int(nearest[i]))
    return np.array([root(i) for i in range(len(parent))])


def collapse_alarm(ms_ssim_fake: float, ms_ssim_real: float, margin: float = MARGIN,
                   absolute: float = ABSOLUTE, dup_rate_fake: float | None = None,
                   dup_rate_real: float | None = None, dup_margin: float = DUP_MARGIN,
                   dup_threshold: float = DUP_THRESHOLD) -> tuple[bool, str]:
    """(alarm, reason): whether generated frames are much more alike than real ones (rule in the module doc).

    The reason names the numbers of every arm that fired, or, without an alarm, why none did.
    """
    if margin < 0 or not 0 < absolute <= 1 or not 0 <= dup_margin <= 1 or not 0 < dup_threshold <= 1:
        raise ConfigError(f"collapse alarm: margins must be >= 0 (duplicate margin <= 1) and thresholds in "
                          f"(0, 1], got margin={margin}, absolute={absolute}, dup_margin={dup_margin}, "
                          f"dup_threshold={dup_threshold}")
    fired, calm = [], []
    pair = f"generated pairs MS-SSIM {ms_ssim_fake:.2f}"
    if ms_ssim_fake >= ms_ssim_real + margin:
        fired.append(f"{pair} ≥ real {ms_ssim_real:.2f} + margin {margin:.2f}")
    else:
        calm.append(f"{pair} < real {ms_ssim_real:.2f} + margin {margin:.2f}")
    if ms_ssim_fake >= absolute and ms_ssim_real < absolute:
        fired.append(f"{pair} ≥ {absolute:.2f} (near-identical) while real is {ms_ssim_real:.2f}")
    if dup_rate_fake is not None and dup_rate_real is not None:
        dup = (f"{dup_rate_fake:.0%} of generated frames have a near-identical twin (MS-SSIM ≥ "
               f"{dup_threshold:.2f})")
        if dup_rate_fake >= dup_rate_real + dup_margin:
            fired.append(f"{dup} ≥ {dup_rate_real:.0%} of real + margin {dup_margin:.0%}")
        else:
            calm.append(f"{dup} < {dup_rate_real:.0%} of real + margin {dup_margin:.0%}")
    if fired:
        return True, "; ".join(fired)
    return False, "no collapse: " + "; ".join(calm)


def diversity(real: np.ndarray, fake: np.ndarray, num_pairs: int = 256, seed: int = 0,
              margin: float = MARGIN, absolute: float = ABSOLUTE, dup_margin: float = DUP_MARGIN,
              dup_threshold: float = DUP_THRESHOLD, batch_size: int = 256,
              progress: bool = True) -> dict[str, float | bool | str]:
    """MS-SSIM of random pairs and near-duplicate rates of both sets, the collapse alarm and its reason.

    Keys: ms_ssim_real, ms_ssim_fake, dup_rate_real, dup_rate_fake, collapse, collapse_reason.
    Compare sets of equal size: the near-duplicate rate grows with how densely a set samples its loops.
    """
    real_v = mean_pairwise_ms_ssim(real, num_pairs, seed, 1, batch_size, progress, "MS-SSIM real")
    fake_v = mean_pairwise_ms_ssim(fake, num_pairs, seed, 2, batch_size, progress, "MS-SSIM generated")
    dup_real = near_duplicate_rate(real, dup_threshold, batch_size, progress, "near-duplicates real")
    dup_fake = near_duplicate_rate(fake, dup_threshold, batch_size, progress, "near-duplicates generated")
    alarm, reason = collapse_alarm(fake_v, real_v, margin, absolute, dup_fake, dup_real, dup_margin,
                                   dup_threshold)
    return {"ms_ssim_real": real_v, "ms_ssim_fake": fake_v, "dup_rate_real": dup_real,
            "dup_rate_fake": dup_fake, "collapse": alarm, "collapse_reason": reason}
