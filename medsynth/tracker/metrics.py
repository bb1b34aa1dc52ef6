"""How well key points were found: catheter-tip error and PCK, bifurcation precision/recall/F1.

Tip metrics are over the frames whose truth has a tip (a frame with the tip out of view says
nothing about tip error); a frame without a predicted tip counts as the frame's diagonal away.
PCK@a% is the share of those tips found within a% of the frame side. Bifurcations are matched one
to one per frame (the most matches within `tolerance`, then the least total distance:
linear_sum_assignment) and the counts pooled over frames, so a frame with many bifurcations weighs
more. With nothing to count, precision and recall are 1 (no false detection, nothing missed); a
metric with nothing to measure (no tip in view anywhere) is None.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints
from medsynth.tracker.config import TOLERANCE

PCK = (0.02, 0.05)


def match(pred: np.ndarray, truth: np.ndarray, tolerance_px: float) -> np.ndarray:
    """Distances [m] of the optimal one-to-one matches of `pred` [p, 2] to `truth` [t, 2] within
    `tolerance_px`."""
    if len(pred) == 0 or len(truth) == 0:
        return np.zeros((0,), np.float64)
    d = np.linalg.norm(pred[:, None, :].astype(np.float64) - truth[None, :, :], axis=-1)
    # Any pair out of tolerance costs more than every pair within it together: the most matches first.
    far = d.size * (tolerance_px + 1.0) + 1.0
    rows, cols = linear_sum_assignment(np.where(d <= tolerance_px, d, far))
    found = d[rows, cols]
    return found[found <= tolerance_px]


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


def keypoint_metrics(
    pred: Sequence[FramePoints],
    truth: Sequence[FramePoints],
    size: int,
    tolerance: float = TOLERANCE,
) -> dict[str, float | int | None]:
    """Tip error (px: mean, median, p95), PCK@2%/5% and bifurcation P/R/F1 of `pred` against `truth`.

    `tolerance` is the bifurcation match distance as a fraction of the side `size`.
    """
    if len(pred) != len(truth):
        raise ValueError(f"{len(pred)} predicted frames for {len(truth)} true ones")
    tol_px = tolerance * size
    errors: list[float] = []
    tp = fp = fn = 0
    matched: list[np.ndarray] = []
    for p, t in zip(pred, truth, strict=True):
        t_tip, p_tip = t.points[t.classes == TIP], p.points[p.classes == TIP]
        if len(t_tip):
            errors.append(
                float(np.linalg.norm(p_tip[0] - t_tip[0])) if len(p_tip) else float(np.sqrt(2) * size)
            )
        p_bif, t_bif = p.points[p.classes == BIFURCATION], t.points[t.classes == BIFURCATION]
        m = match(p_bif, t_bif, tol_px)
        matched.append(m)
        tp += len(m)
        fp += len(p_bif) - len(m)
        fn += len(t_bif) - len(m)
    e = np.asarray(errors, np.float64)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    out: dict[str, float | int | None] = {
        "frames": len(truth),
        "tip_frames": len(e),
        "tip_error_mean_px": float(e.mean()) if len(e) else None,
        "tip_error_median_px": float(np.median(e)) if len(e) else None,
        "tip_error_p95_px": float(np.percentile(e, 95)) if len(e) else None,
    }
    for a in PCK:
        out[f"tip_pck{round(a * 100)}"] = float((e <= a * size).mean()) if len(e) else None
    pairs = np.concatenate(matched)
    out.update(
        {
            "bif_tolerance_px": tol_px,
            "bif_tp": tp,
            "bif_fp": fp,
            "bif_fn": fn,
            "bif_precision": precision,
            "bif_recall": recall,
            "bif_f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "bif_matched_error_px": float(pairs.mean()) if len(pairs) else None,
        }
    )
    return out
