"""Differentiable augmentation of everything D sees, real and generated alike (DiffAugment).

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training": with a few
hundred frames D memorises the training set and G collapses onto what D lets through. Applying
the same random transformations to real *and* generated frames, inside D's forward pass of both
updates and differentiably (G learns through them), takes that away without teaching G the
transformations: D never sees an unaugmented frame of either kind, so nothing leaks (unlike
`medsynth.data.input.augment_batch`, which changes the real frames only and so must stay
X-ray-plausible). StyleGAN2-ADA's augmentation pipeline is the same idea with an adaptive strength.

The random numbers come in as `u`, uniform [0, 1), one row per frame: the caller draws them for
the whole global batch from a stateless seed, so replicas slice the same numbers one device would
use (and a resumed run draws what the uninterrupted one drew).
"""

from __future__ import annotations

import tensorflow as tf

from medsynth.errors import ConfigError

POLICIES = ("brightness", "contrast", "translation", "cutout")
# The paper's "color,translation,cutout" (colour = brightness and contrast for grey frames). Measured
# at 32 px on 512 phantom frames: without it G collapsed to one frame by step 1,500; with it the
# samples stayed diverse (catheter hooks, branching vessels), and with colour a little more so.
DEFAULT_POLICY = "brightness,contrast,translation,cutout"
UNIFORMS = 6  # random numbers per frame: brightness, contrast, shift y/x, cutout centre y/x
TRANSLATION, CUTOUT = 1 / 8, 1 / 2  # the paper's ratios of the image side


def parse_policy(policy: str) -> tuple[str, ...]:
    """The transformations named in `policy` ("none", "" or a comma list of POLICIES; TrainConfig
    turns "auto" into DEFAULT_POLICY)."""
    names = tuple(p.strip().lower() for p in str(policy).split(",") if p.strip())
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ConfigError(
            f"unknown --d-augment transformation {', '.join(map(repr, unknown))}; use 'auto', 'none' "
            f"or a comma list of: {', '.join(POLICIES)}"
        )
    return names


def diff_augment(x: tf.Tensor, u: tf.Tensor, policy: tuple[str, ...], cutout: float = CUTOUT) -> tf.Tensor:
    """Frames `x` [n, H, W, C] in [-1, 1] transformed by `policy`, frame i with the numbers `u[i]`;
    `cutout`: the erased square's side as a share of the frame's."""
    if not policy:
        return x
    return _geometric(_colour(x, u, policy), u, policy, cutout)


def diff_augment_with_maps(
    x: tf.Tensor, maps: tf.Tensor, u: tf.Tensor, policy: tuple[str, ...], cutout: float = CUTOUT
) -> tuple[tf.Tensor, tf.Tensor]:
    """Frames `x` and their key points' heat maps `maps` [n, H, W, C'] transformed together: the maps
    move with the frame (translation, cutout), the colour changes the frame alone."""
    if not policy:
        return x, maps
    channels = x.shape[-1]
    both = tf.concat([_colour(x, u, policy), tf.cast(maps, x.dtype)], -1)
    both = _geometric(both, u, policy, cutout)
    return both[..., :channels], both[..., channels:]


def _colour(x: tf.Tensor, u: tf.Tensor, policy: tuple[str, ...]) -> tf.Tensor:
    u = tf.cast(u, x.dtype)
    col = lambda i: u[:, i][:, None, None, None]  # noqa: E731 - one number per frame, broadcast
    if "brightness" in policy:  # ± a quarter of the [-1, 1] range
        x = x + (col(0) - 0.5)
    if "contrast" in policy:  # × 0.5 … 1.5 about the frame's mean
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * (col(1) + 0.5) + mean
    return x


def _geometric(x: tf.Tensor, u: tf.Tensor, policy: tuple[str, ...], cutout: float) -> tf.Tensor:
    u = tf.cast(u, x.dtype)
    if "translation" in policy:
        x = _translate(x, u[:, 2], u[:, 3])
    if "cutout" in policy:
        x = _cutout(x, u[:, 4], u[:, 5], cutout)
    return x


def _part(side: tf.Tensor, ratio: float) -> tf.Tensor:
    """round(side · ratio) in pixels."""
    return tf.cast(tf.cast(side, tf.float32) * ratio + 0.5, tf.int32)


def _offsets(u: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Integer shifts in [-shift, shift] from uniforms."""
    n = 2 * shift + 1
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(n, u.dtype)), tf.int32), n - 1) - shift


def _translate(x: tf.Tensor, uy: tf.Tensor, ux: tf.Tensor) -> tf.Tensor:
    """Shift each frame by up to 1/8 of its side; what comes in is 0 (mid-grey), as in the paper."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    dy, dx = _offsets(uy, _part(h, TRANSLATION)), _offsets(ux, _part(w, TRANSLATION))
    # source row/column of every output pixel; out of the frame → the zero row/column padded at 0
    rows = tf.range(h)[None, :] - dy[:, None] + 1
    cols = tf.range(w)[None, :] - dx[:, None] + 1
    rows = tf.where((rows >= 1) & (rows <= h), rows, 0)
    cols = tf.where((cols >= 1) & (cols <= w), cols, 0)
    padded = tf.pad(x, [[0, 0], [1, 0], [1, 0], [0, 0]])
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def _cutout(x: tf.Tensor, uy: tf.Tensor, ux: tf.Tensor, ratio: float = CUTOUT) -> tf.Tensor:
    """Set a square of `ratio` of the side (DiffAugment's 0.5; Projected GAN's 0.2), centred anywhere
    in the frame, to 0 (mid-grey)."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ch, cw = _part(h, ratio), _part(w, ratio)
    cy = tf.cast(tf.floor(tf.cast(uy, tf.float32) * tf.cast(h, tf.float32)), tf.int32)
    cx = tf.cast(tf.floor(tf.cast(ux, tf.float32) * tf.cast(w, tf.float32)), tf.int32)
    ys = tf.range(h)[None, :] - (cy[:, None] - ch // 2)
    xs = tf.range(w)[None, :] - (cx[:, None] - cw // 2)
    inside_y = (ys >= 0) & (ys < ch)
    inside_x = (xs >= 0) & (xs < cw)
    keep = tf.logical_not(inside_y[:, :, None] & inside_x[:, None, :])
    return x * tf.cast(keep, x.dtype)[:, :, :, None]
