"""Sliced Wasserstein distance on Laplacian-pyramid patches (the ProGAN protocol).

Karras et al. 2018 (progressive_growing_of_gans, `metrics/sliced_wasserstein.py`):
every frame is split into a Laplacian pyramid down to 16 px; from each level,
7x7 neighbourhoods ("descriptors") are cut at random places; each set of
descriptors is normalised by its own per-channel mean and standard deviation;
the distance between the real and the generated descriptor clouds is the mean,
over random unit directions, of the 1-D Wasserstein distance of their
projections (sort both, average the gaps). Reported per level and averaged,
multiplied by 1e3 as ProGAN prints it.

It needs no pretrained network, so it is always on. Two deliberate
properties follow from the protocol: (1) the per-set normalisation makes SWD
blind to a global brightness/contrast change of a whole level — FID/KID see
that — and it measures the distribution of local structure at each scale;
(2) values depend on the number of frames and descriptors, so compare only
numbers computed with the same `n` and settings.

Both sets use the same patch positions and the same directions (common
random numbers): SWD of a set with itself is exactly 0 and differences
between models are not drowned in sampling noise.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from medsynth.errors import ConfigError, DataError
from medsynth.evaluate.frames import as_frames, same_size
from medsynth.progress import Progress

# The binomial filter of cv2.pyrDown / ProGAN (5x5 = outer product of these taps).
_TAPS = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


@dataclass(frozen=True)
class SWDResult:
    """SWD x 1e3 per pyramid level (keyed by resolution, finest first) and their mean."""

    per_level: dict[int, float]
    mean: float


def swd_resolutions(size: int, min_resolution: int = 16) -> list[int]:
    """Pyramid levels ProGAN uses: the full size, halved while it stays >= `min_resolution`."""
    if size < min_resolution:
        return [size]
    res, out = size, []
    while res >= min_resolution:
        out.append(res)
        if res % 2:
            break
        res //= 2
    return out


def _blur(x: np.ndarray, gain: float) -> np.ndarray:
    """Separable binomial blur with mirror borders (scipy 'mirror' = numpy/TF 'reflect')."""
    h, w = x.shape[1:]
    p = np.pad(x, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    t = sum(np.float32(c) * p[:, :, k : k + w] for k, c in enumerate(_TAPS))
    return np.float32(gain) * sum(np.float32(c) * t[:, k : k + h, :] for k, c in enumerate(_TAPS))


def _pyr_down(x: np.ndarray) -> np.ndarray:
    """cv2.pyrDown: blur, keep every second pixel."""
    return _blur(x, 1.0)[:, ::2, ::2]


def _pyr_up(x: np.ndarray) -> np.ndarray:
    """cv2.pyrUp: insert zeros, blur with gain 4 (each output pixel saw a quarter of the taps)."""
    n, h, w = x.shape
    z = np.zeros((n, 2 * h, 2 * w), np.float32)
    z[:, ::2, ::2] = x
    return _blur(z, 4.0)


def laplacian_pyramid(images: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of grey frames [n, H, W] as float32 arrays, finest level first.

    Mirror borders and the binomial filter, as cv2.pyrDown/pyrUp and ProGAN's
    scipy version; the last level is the Gaussian residual. Summing the levels
    back up (`reconstruct_laplacian_pyramid`) gives the frames again.
    """
    pyramid = [np.asarray(images, np.float32)]
    for _ in range(1, levels):
        pyramid.append(_pyr_down(pyramid[-1]))
        pyramid[-2] = pyramid[-2] - _pyr_up(pyramid[-1])
    return pyramid


def reconstruct_laplacian_pyramid(pyramid: list[np.ndarray]) -> np.ndarray:
    """Inverse of `laplacian_pyramid`: the reason a Laplacian pyramid loses nothing."""
    img = pyramid[-1]
    for level in pyramid[-2::-1]:
        img = _pyr_up(img) + level
    return img


def patch_positions(n: int, height: int, width: int, patch_size: int, per_image: int,
                    seed: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded patch centres [n, per_image] for one level; image i gets the same ones in every call."""
    h = patch_size // 2
    if height < patch_size or width < patch_size:
        raise ConfigError(f"SWD level {height}x{width} is smaller than the {patch_size}-px patch; "
                          f"raise min_resolution to at least {patch_size}")
    rng = np.random.default_rng([seed, level, 0x5D])
    ys = rng.integers(h, max(h + 1, height - h), size=(n, per_image))
    xs = rng.integers(h, max(h + 1, width - h), size=(n, per_image))
    return ys, xs


def extract_patches(level: np.ndarray, ys: np.ndarray, xs: np.ndarray, patch_size: int) -> np.ndarray:
    """Cut patch_size^2 neighbourhoods around the given centres: [n * per_image, patch_size^2]."""
    h = patch_size // 2
    off = np.arange(-h, h + 1)
    n = level.shape[0]
    img = np.arange(n)[:, None, None, None]
    yy = ys[:, :, None, None] + off[None, None, :, None]
    xx = xs[:, :, None, None] + off[None, None, None, :]
    return level[img, yy, xx].reshape(-1, patch_size * patch_size)


def normalize_descriptors(desc: np.ndarray) -> np.ndarray:
    """ProGAN's per-channel normalisation (one channel here): zero mean, unit std over the whole set."""
    desc = desc - desc.mean(dtype=np.float64).astype(np.float32)
    std = float(desc.std(dtype=np.float64))
    return desc / np.float32(max(std, 1e-8))


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, dir_repeats: int = 4, dirs_per_repeat: int = 128,
                       seed: int = 0, progress: Progress | None = None) -> float:
    """Mean 1-D Wasserstein-1 distance between the projections of `a` and `b` on random unit directions.

    `a` and `b` are point clouds [N, D] of the same N (the empirical 1-D W1 of
    equal-size samples is the mean gap between sorted values). Directions are
    drawn per repeat from a seeded generator, so the value is a deterministic
    function of (a, b, seed).
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"sliced_wasserstein needs two [N, D] arrays of the same shape, "
                        f"got {a.shape} and {b.shape}")
    rng = np.random.default_rng([seed, 0xD1])
    results = []
    with ThreadPoolExecutor(2) as pool:
        for _ in range(dir_repeats):
            dirs = rng.standard_normal((a.shape[1], dirs_per_repeat))
            dirs = (dirs / np.sqrt(np.sum(np.square(dirs), axis=0, keepdims=True))).astype(np.float32)
            # [dirs, N] rows are contiguous, so the sort runs along memory; np.sort releases the GIL.
            pa, pb = pool.map(_sorted_projection, (a, b), (dirs, dirs))
            results.append(float(np.mean(np.abs(pa - pb), dtype=np.float64)))
            if progress is not None:
                progress.update(dirs_per_repeat)
    return float(np.mean(results))


def _sorted_projection(x: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    proj = np.ascontiguousarray((x @ dirs).T)
    proj.sort(axis=-1)
    return proj


def _descriptors(frames: np.ndarray, levels: int, positions: list[tuple[np.ndarray, np.ndarray]],
                 patch_size: int, batch_size: int, progress: Progress | None) -> list[np.ndarray]:
    """Descriptors per level for all frames, built batch by batch so memory stays at one batch of pyramids."""
    per_level: list[list[np.ndarray]] = [[] for _ in range(levels)]
    for start in range(0, len(frames), batch_size):
        batch = frames[start : start + batch_size]
        stop = start + len(batch)
        for lod, level in enumerate(laplacian_pyramid(batch, levels)):
            ys, xs = positions[lod]
            per_level[lod].append(extract_patches(level, ys[start:stop], xs[start:stop], patch_size))
        if progress is not None:
            progress.update(len(batch))
    return [np.concatenate(p, axis=0) for p in per_level]


def sliced_wasserstein_distance(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    seed: int = 0,
    patch_size: int = 7,
    patches_per_image: int = 128,
    dir_repeats: int = 4,
    dirs_per_repeat: int = 128,
    min_resolution: int = 16,
    batch_size: int = 256,
    progress: bool = True,
) -> SWDResult:
    """SWD x 1e3 between real and generated frames, per Laplacian level and averaged (ProGAN defaults)."""
    real = as_frames(real, "real frames")
    fake = as_frames(fake, "generated frames")
    same_size(real, fake)
    if patches_per_image < 1 or dir_repeats < 1 or dirs_per_repeat < 1 or batch_size < 1:
        raise ConfigError("SWD: patches_per_image, dir_repeats, dirs_per_repeat and batch_size must be >= 1")
    height, width = real.shape[1:]
    resolutions = swd_resolutions(height, min_resolution)
    levels = len(resolutions)
    if height % (2 ** (levels - 1)) or width % (2 ** (levels - 1)):
        raise DataError(f"SWD: {height}x{width} frames cannot be halved {levels - 1} times; "
                        f"use a size divisible by {2 ** (levels - 1)} or a larger min_resolution")
    n_max = max(len(real), len(fake))
    positions = []
    for lod in range(levels):
        h, w = height >> lod, width >> lod
        positions.append(patch_positions(n_max, h, w, patch_size, patches_per_image, seed, lod))

    bar = Progress(len(real) + len(fake), "SWD descriptors", unit="img") if progress else None
    try:
        desc_real = _descriptors(real, levels, positions, patch_size, batch_size, bar)
        desc_fake = _descriptors(fake, levels, positions, patch_size, batch_size, bar)
    finally:
        if bar is not None:
            bar.close()

    per_level: dict[int, float] = {}
    total_dirs = levels * dir_repeats * dirs_per_repeat
    bar = Progress(total_dirs, "SWD projections", unit="dir") if progress else None
    try:
        for lod, res in enumerate(resolutions):
            a = normalize_descriptors(desc_real[lod])
            b = normalize_descriptors(desc_fake[lod])
            a, b = _equal_count(a, b, seed, lod)
            per_level[res] = 1e3 * sliced_wasserstein(a, b, dir_repeats, dirs_per_repeat,
                                                      seed=seed * 1000 + lod, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    return SWDResult(per_level=per_level, mean=float(np.mean(list(per_level.values()))))


def _equal_count(a: np.ndarray, b: np.ndarray, seed: int, lod: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size clouds for the sorted-gap W1: a seeded subsample of the larger one."""
    if len(a) == len(b):
        return a, b
    rng = np.random.default_rng([seed, lod, 0xEC])
    m = min(len(a), len(b))
    if len(a) > m:
        a = a[np.sort(rng.choice(len(a), m, replace=False))]
    else:
        b = b[np.sort(rng.choice(len(b), m, replace=False))]
    return a, b
