"""Key-point layouts to synthesise frames for: the real labelled layouts, moved a little.

The conditional generator makes a frame for a layout it is asked; which layouts it is asked decides
what the synthetic frames add. The utility experiment may use only what the real-only tracker sees,
so layouts come from the same N labelled frames: each synthetic layout is one of them under a random
similarity transform about the centre (mirror, rotation, scale, shift) — new positions of the same
anatomy, as another projection or table position would give. Points that leave the frame are
dropped; a layout whose catheter tip leaves it is drawn again (the tracker needs the tip).
"""

from __future__ import annotations

import numpy as np

from medsynth.data.geometry import Jitter, draw
from medsynth.data.keypoints import MAX_POINTS, TIP, FramePoints, LabelledFrames

__all__ = ["Jitter", "sample_layouts"]

DEFAULT_JITTER = Jitter()


def sample_layouts(
    real: LabelledFrames, m: int, seed: int, jitter: Jitter = DEFAULT_JITTER
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`m` layouts (points [m, K, 2], classes [m, K], mask [m, K], source index [m]) drawn from the
    labelled layouts of `real`, deterministic per seed."""
    if len(real) == 0:
        raise ValueError("no labelled frames to draw layouts from")
    rng = np.random.default_rng([seed, 0x1A7])
    size = real.size
    points = np.zeros((m, MAX_POINTS, 2), np.float32)
    classes = np.zeros((m, MAX_POINTS), np.int32)
    mask = np.zeros((m, MAX_POINTS), bool)
    source = np.zeros(m, np.int64)
    for i in range(m):
        for _ in range(100):
            k = int(rng.integers(len(real)))
            fp = real.frame_points(k)
            moved = FramePoints(draw(rng, size, jitter).points(fp.points), fp.classes)
            inside = moved.inside(size)
            has_tip = np.any(fp.classes == TIP)
            if has_tip and not np.all(inside[fp.classes == TIP]):
                continue
            kept = moved.keep(inside)
            points[i], classes[i], mask[i], _ = kept.padded()
            source[i] = k
            break
        else:  # pragma: no cover - only a layout whose tip sits on the border could get here
            points[i], classes[i], mask[i], _ = real.frame_points(k).padded()
            source[i] = k
    return points, classes, mask, source
