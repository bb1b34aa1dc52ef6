"""One similarity transform of a frame and its key points: mirror, rotation, scale, shift about the centre.

Two users move key points with it and must agree on the convention of `data/keypoints.py` (pixel
centres at integers, a frame of side S spans [-0.5, S - 0.5]): the utility experiment's layouts
(`utility/layouts.py`, points only) and the tracker's classic augmentation (`tracker/train.py`, a frame
and its points together). Here, once, so that a point and the pixels under it go to the same place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Jitter:
    """How far a random similarity may move a frame: the ranges `draw` samples from."""

    flip_lr: float = 0.5  # probability of the left-right mirror (LAO/RAO views mirror each other)
    rotate_deg: float = 10.0  # ± degrees
    scale: float = 0.08  # ± relative
    shift: float = 0.06  # ± fraction of the side


@dataclass(frozen=True)
class Similarity:
    """p' = matrix @ p + offset for points (x, y) in pixels (pixel centres at integers)."""

    matrix: np.ndarray  # float64 [2, 2]
    offset: np.ndarray  # float64 [2]

    @classmethod
    def about_centre(
        cls,
        size: int,
        flip: bool = False,
        angle_deg: float = 0.0,
        scale: float = 1.0,
        shift: tuple[float, float] | np.ndarray = (0.0, 0.0),
    ) -> Similarity:
        """Mirror (x → S-1-x), then rotate by `angle_deg` and scale about the frame's centre, then shift
        by `shift` pixels."""
        a = np.deg2rad(angle_deg)
        rotate = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
        matrix = rotate @ np.diag([-1.0 if flip else 1.0, 1.0])
        centre = np.full(2, (size - 1) / 2.0)
        return cls(matrix, centre + np.asarray(shift, np.float64) - matrix @ centre)

    def points(self, p: np.ndarray) -> np.ndarray:
        """Points [..., 2] moved (float32)."""
        return (np.asarray(p, np.float64) @ self.matrix.T + self.offset).astype(np.float32)

    def warp(self, image: np.ndarray) -> np.ndarray:
        """A float frame [S, S] moved like its points: bilinear, reflected at the borders (no new
        values outside the frame's own range)."""
        from scipy.ndimage import affine_transform

        inverse = np.linalg.inv(self.matrix)
        swap = np.array([[0.0, 1.0], [1.0, 0.0]])  # (x, y) ↔ (row, col)
        # an output pixel q takes the input at inverse @ (q - offset), in (row, col) order
        return affine_transform(
            np.asarray(image, np.float32),
            swap @ inverse @ swap,
            offset=swap @ (-inverse @ self.offset),
            order=1,
            mode="reflect",
        )


def draw(rng: np.random.Generator, size: int, jitter: Jitter) -> Similarity:
    """A random similarity within `jitter` (mirror, angle, scale, then the shift: four draws of `rng`
    in this order whatever is switched off, so a seed's other draws do not move)."""
    flip = rng.random() < jitter.flip_lr
    angle = rng.uniform(-jitter.rotate_deg, jitter.rotate_deg)
    scale = 1.0 + rng.uniform(-jitter.scale, jitter.scale)
    shift = rng.uniform(-jitter.shift, jitter.shift, size=2) * size
    return Similarity.about_centre(size, flip, angle, scale, shift)
