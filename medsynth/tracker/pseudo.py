"""Pseudo-labels: a trained tracker's key points on frames nobody labelled, and how sure it was.

Self-training (a tracker trains on its teacher's confident guesses) and the utility experiment's
generator (which learns from every frame, with the guessed layouts as its condition) both start here.
Only images come in, so no label of those frames can be read by mistake. A frame is *confident* when
its tip's heat-map peak reaches `confidence`; its bifurcations are the peaks above `confidence` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.keypoints import TIP, FramePoints, LabelledFrames
from medsynth.errors import ConfigError
from medsynth.tracker.decode import decode
from medsynth.tracker.evaluate import PREDICT_BATCH, load_tracker, predict


@dataclass
class PseudoLabels:
    """Every frame given, with the key points the tracker found (real frames: not synthetic)."""

    frames: LabelledFrames
    tip_scores: np.ndarray  # float32 [n], the tip's heat-map peak
    confident: np.ndarray  # bool [n], tip_scores >= the confidence asked for

    def kept(self) -> LabelledFrames:
        """The confident frames alone (what self-training learns from)."""
        return self.frames.take(np.flatnonzero(self.confident))

    def layouts(self) -> list[FramePoints]:
        """Every frame's key points, its tip dropped where the tracker was unsure of it (a layout for
        each frame, as a key-point-conditioned generator needs)."""
        out = []
        for i in range(len(self.frames)):
            fp = self.frames.frame_points(i)
            out.append(fp if self.confident[i] else fp.keep(fp.classes != TIP))
        return out


def pseudo_label(run_dir: str | Path, images: np.ndarray, confidence: float) -> PseudoLabels:
    """The key points the tracker of `run_dir` finds on uint8 frames [n, S, S]."""
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"the pseudo-label confidence must be in (0, 1), got {confidence}")
    model, _, _ = load_tracker(run_dir)
    found = []
    for start in range(0, len(images), PREDICT_BATCH):  # decoded per batch: n heat maps need not fit
        found += decode(predict(model, images[start : start + PREDICT_BATCH]), confidence)
    tips = np.array([d.scores[0] if d.points.classes[0] == TIP else 0.0 for d in found], np.float32)
    frames = LabelledFrames.from_points(np.asarray(images, np.uint8), [d.points for d in found])
    return PseudoLabels(frames, tips.reshape(-1), tips >= confidence)
