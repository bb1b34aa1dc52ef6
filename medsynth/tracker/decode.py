"""Heat maps → key points, in the pixel-centre convention of medsynth.data.keypoints.

Tip: the arg-max of the tip map (every frame gets one; its score says how sure), refined to
sub-pixel by a parabola fit to the log heat map around it (`_refine`). Bifurcations: local maxima of
their map (3x3 max-pool non-maximum suppression) above `threshold`, refined the same way.
Plain numpy on sigmoid probabilities, so the metrics and the figures need no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import maximum_filter

from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints
from medsynth.tracker.config import THRESHOLD


@dataclass
class Detections:
    """One frame's decoded key points (tip first) and each point's heat-map score."""

    points: FramePoints
    scores: np.ndarray  # float32 [k]


def _offset(left: float, centre: float, right: float) -> float:
    """Where the parabola through three log-probabilities peaks, from the centre sample (in ±0.5)."""
    curvature = left - 2.0 * centre + right
    if curvature >= 0:  # not a peak along this axis (flat or a saddle): keep the pixel centre
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


def _refine(prob: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(x, y) float32 [k, 2]: each peak (row, col) moved to the vertex of the parabolas through the log
    heat map at it and its 4 neighbours; at the frame's edge that axis stays at the pixel centre.

    The log of a Gaussian is a parabola, so this is exact for the target's shape (the 3x3 centroid
    pulls towards the centre pixel: 0.36 px off for a point 0.3, 0.4 px from it). Measured on
    phantom 64 px after 300 steps, tips within 2 px: 0.78 px mean error unrefined, 0.70 centroid, 0.66
    this.
    """
    log_p = np.log(np.clip(prob.astype(np.float64), 1e-12, 1.0))
    size = prob.shape[0]
    out = np.zeros((len(rows), 2), np.float32)
    for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
        dx = _offset(log_p[r, c - 1], log_p[r, c], log_p[r, c + 1]) if 0 < c < size - 1 else 0.0
        dy = _offset(log_p[r - 1, c], log_p[r, c], log_p[r + 1, c]) if 0 < r < size - 1 else 0.0
        out[k] = (c + dx, r + dy)
    return out


def decode_frame(prob: np.ndarray, threshold: float = THRESHOLD) -> Detections:
    """Key points of one frame from its heat maps `prob` [S, S, C] (sigmoid probabilities)."""
    prob = np.asarray(prob, np.float32)
    tip_map, bif_map = prob[..., TIP], prob[..., BIFURCATION]
    r, c = np.unravel_index(int(np.argmax(tip_map)), tip_map.shape)
    tip = _refine(tip_map, np.array([r]), np.array([c]))
    local_max = bif_map == maximum_filter(bif_map, size=3, mode="constant", cval=-np.inf)
    peaks = local_max & (bif_map > threshold)
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-bif_map[rows, cols], kind="stable")  # strongest first
    rows, cols = rows[order], cols[order]
    bif = _refine(bif_map, rows, cols)
    points = np.concatenate([tip, bif]).astype(np.float32)
    classes = np.array([TIP] + [BIFURCATION] * len(rows), np.int32)
    scores = np.concatenate([[tip_map[r, c]], bif_map[rows, cols]]).astype(np.float32)
    return Detections(FramePoints(points, classes), scores)


def decode(probs: np.ndarray, threshold: float = THRESHOLD) -> list[Detections]:
    """Key points of each frame of `probs` [n, S, S, C]."""
    return [decode_frame(p, threshold) for p in np.asarray(probs)]
