"""Key points of a frame — the catheter tip and vessel bifurcations — and the one way they are held.

Convention (everywhere: shards, tf.data, the tracker, the conditional generator, COCO files this
project writes): (x, y) in pixels of the frame they belong to, **pixel centres at integers**, so pixel
(row i, column j) is the point (j, i) and a frame of side S spans [-0.5, S - 0.5] on both axes. The
phantom renders its key points in this convention, and COCO keypoints read by `data/coco.py` are
taken in it too.

A frame's key points are a padded set of fixed size `MAX_POINTS` — `points` [K, 2], `classes` [K]
(index into `CLASSES`), `mask` [K] — because TF Serving signatures and tf.data batches need fixed
shapes. The catheter tip comes first when there is one. A frame is *labelled* when somebody (or the
phantom) said where its key points are; a labelled frame with no point in view is still labelled, an
unlabelled frame has no say (it only trains the unconditional GAN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASSES = ("catheter_tip", "bifurcation")
TIP, BIFURCATION = 0, 1
MAX_POINTS = 32  # 1 tip + up to 31 bifurcations (the phantom has 7-17 in view at 64 px)
SIGMA_FRACTION = 1.5 / 64  # heat-map Gaussian: 1.5 px at 64 px, scaled with the side


@dataclass
class FramePoints:
    """One frame's key points, unpadded: `points` float32 [k, 2], `classes` int32 [k]."""

    points: np.ndarray
    classes: np.ndarray

    @classmethod
    def empty(cls) -> FramePoints:
        return cls(np.zeros((0, 2), np.float32), np.zeros((0,), np.int32))

    @classmethod
    def from_dict(cls, kp: dict) -> FramePoints:
        """The phantom's form: {"catheter_tip": [x, y] or None, "bifurcations": [[x, y], ...]}."""
        pts: list[list[float]] = []
        cl: list[int] = []
        tip = kp.get("catheter_tip")
        if tip is not None:
            pts.append([float(tip[0]), float(tip[1])])
            cl.append(TIP)
        for x, y in kp.get("bifurcations", []):
            pts.append([float(x), float(y)])
            cl.append(BIFURCATION)
        return cls(np.asarray(pts, np.float32).reshape(-1, 2), np.asarray(cl, np.int32))

    def to_dict(self) -> dict:
        tips = self.points[self.classes == TIP]
        return {
            "catheter_tip": [round(float(v), 3) for v in tips[0]] if len(tips) else None,
            "bifurcations": [
                [round(float(x), 3), round(float(y), 3)] for x, y in self.points[self.classes == BIFURCATION]
            ],
        }

    def __len__(self) -> int:
        return len(self.classes)

    def inside(self, size: int) -> np.ndarray:
        """Which points lie on a frame of side `size` (bool [k])."""
        p = self.points
        return np.all((p >= -0.5) & (p <= size - 0.5), axis=1)

    def keep(self, which: np.ndarray) -> FramePoints:
        return FramePoints(self.points[which], self.classes[which])

    def padded(self, k: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(points [k, 2], classes [k], mask [k], number dropped): the tip first, then the rest in order."""
        order = np.argsort(self.classes != TIP, kind="stable")
        points, classes = self.points[order], self.classes[order]
        n = min(len(classes), k)
        p = np.zeros((k, 2), np.float32)
        c = np.zeros((k,), np.int32)
        m = np.zeros((k,), bool)
        p[:n], c[:n], m[:n] = points[:n], classes[:n], True
        return p, c, m, len(classes) - n

    @classmethod
    def from_padded(cls, points: np.ndarray, classes: np.ndarray, mask: np.ndarray) -> FramePoints:
        mask = np.asarray(mask, bool)
        return cls(np.asarray(points, np.float32)[mask], np.asarray(classes, np.int32)[mask])


def follow_crop_resize(fp: FramePoints, height: int, width: int, size: int) -> tuple[FramePoints, int]:
    """The key points of a `height` x `width` frame after `images.square_resize` to `size`, and how
    many fell outside the centre crop (dropped, never clamped)."""
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    scale = size / side
    # Pixel-centre coordinates: the crop's edge -0.5 maps to -0.5, the other edge side-0.5 to size-0.5.
    shifted = fp.points - np.array([left, top], np.float32)
    inside = np.all((shifted >= -0.5) & (shifted <= side - 0.5), axis=1)
    moved = (shifted + 0.5) * scale - 0.5
    out = FramePoints(moved[inside].astype(np.float32), fp.classes[inside])
    return out, int((~inside).sum())


@dataclass
class LabelledFrames:
    """Frames with their key points, padded to `MAX_POINTS`: what the tracker and the conditional
    generator train on, and what labelled synthesis produces."""

    images: np.ndarray  # uint8 [n, S, S]
    points: np.ndarray  # float32 [n, K, 2]
    classes: np.ndarray  # int32 [n, K]
    mask: np.ndarray  # bool [n, K]
    synthetic: bool = False

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 3 or self.images.shape[1] != self.images.shape[2]:
            raise ValueError(f"labelled frames are [n, S, S], got {self.images.shape}")
        if (
            self.points.shape[:1] != (n,)
            or self.points.shape[2:] != (2,)
            or self.classes.shape != self.mask.shape
        ):
            raise ValueError("points [n, K, 2], classes [n, K] and mask [n, K] must match the frames")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

    @classmethod
    def from_points(
        cls, images: np.ndarray, frames: list[FramePoints], synthetic: bool = False
    ) -> LabelledFrames:
        padded = [f.padded() for f in frames]
        return cls(
            np.asarray(images, np.uint8),
            np.stack([p[0] for p in padded]) if padded else np.zeros((0, MAX_POINTS, 2), np.float32),
            np.stack([p[1] for p in padded]) if padded else np.zeros((0, MAX_POINTS), np.int32),
            np.stack([p[2] for p in padded]) if padded else np.zeros((0, MAX_POINTS), bool),
            synthetic,
        )

    def frame_points(self, i: int) -> FramePoints:
        return FramePoints.from_padded(self.points[i], self.classes[i], self.mask[i])

    def take(self, index: np.ndarray) -> LabelledFrames:
        index = np.asarray(index)
        return LabelledFrames(
            self.images[index], self.points[index], self.classes[index], self.mask[index], self.synthetic
        )

    @staticmethod
    def concat(parts: list[LabelledFrames]) -> LabelledFrames:
        """Real and synthetic frames in one set (synthetic if any part is)."""
        return LabelledFrames(
            np.concatenate([p.images for p in parts]),
            np.concatenate([p.points for p in parts]),
            np.concatenate([p.classes for p in parts]),
            np.concatenate([p.mask for p in parts]),
            any(p.synthetic for p in parts),
        )


def flip_lr(points, size):  # noqa: ANN001, ANN201 - numpy arrays or tensors alike
    """x of the left-right mirror image (pixel centres at integers: x → S - 1 - x)."""
    return points * np.array([-1.0, 1.0], np.float32) + np.array([size - 1.0, 0.0], np.float32)


def heatmaps(points, classes, mask, size: int, sigma: float | None = None):  # noqa: ANN001, ANN201
    """Gaussian heat maps float32 [n, S, S, len(CLASSES)] of padded key points (TF op, batched).

    Each class's map is the maximum over that class's points of exp(-d² / 2σ²), σ = 1.5 px at 64 px
    scaled with the side: the tracker's target and the conditional generator's input.
    """
    import tensorflow as tf

    sigma = float(sigma if sigma is not None else SIGMA_FRACTION * size)
    points = tf.convert_to_tensor(points, tf.float32)
    grid = tf.range(size, dtype=tf.float32)
    dx = grid[None, None, None, :] - points[:, :, 0, None, None]  # [n, K, 1, S]
    dy = grid[None, None, :, None] - points[:, :, 1, None, None]  # [n, K, S, 1]
    g = tf.exp(-(dx * dx + dy * dy) / (2.0 * sigma * sigma))  # [n, K, S, S]
    valid = tf.cast(tf.convert_to_tensor(mask), tf.float32)
    one_hot = tf.one_hot(tf.cast(classes, tf.int32), len(CLASSES)) * valid[..., None]  # [n, K, C]
    maps = tf.reduce_max(g[..., None] * one_hot[:, :, None, None, :], axis=1)  # [n, S, S, C]
    return maps
