"""A trained tracker on labelled frames: load a run's newest checkpoint, predict, decode, measure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth.data.keypoints import LabelledFrames
from medsynth.errors import CheckpointError, DataError
from medsynth.storage import read_json
from medsynth.tracker.config import TrackerConfig
from medsynth.tracker.decode import Detections, decode
from medsynth.tracker.metrics import keypoint_metrics
from medsynth.tracker.model import build_tracker
from medsynth.train.checkpoints import CONFIG_FILE, local_checkpoints

PREDICT_BATCH = 256


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 frames [n, S, S] → the network's input float32 [n, S, S, 1] in [-1, 1]."""
    return (np.asarray(images, np.float32) / 127.5 - 1.0)[..., None]


def predict(model: tf.keras.Model, images: np.ndarray, batch: int = PREDICT_BATCH) -> np.ndarray:
    """Heat maps (sigmoid probabilities) float32 [n, S, S, C] of uint8 frames [n, S, S]."""
    out = [
        tf.sigmoid(model(to_input(images[i : i + batch]), training=False)).numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, *model.output_shape[1:]), np.float32)


def score(
    model: tf.keras.Model, frames: LabelledFrames, threshold: float, tolerance: float
) -> tuple[dict[str, Any], list[Detections]]:
    """The metrics of `model` on `frames`, and its detections (for pictures)."""
    found = decode(predict(model, frames.images), threshold)
    truth = [frames.frame_points(i) for i in range(len(frames))]
    return keypoint_metrics([d.points for d in found], truth, frames.size, tolerance), found


def run_config(run_dir: str | Path) -> tuple[TrackerConfig, dict[str, Any]]:
    """The run's TrackerConfig and all of its config.json (frame side, data counts, settings)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} is not a tracker run (no {CONFIG_FILE}); pass the --out of `medsynth tracker train`"
        )
    saved = read_json(path)
    if saved.get("kind") != "tracker":
        raise CheckpointError(f"{run_dir} is not a tracker run; pass the --out of `medsynth tracker train`")
    return TrackerConfig.from_saved(saved), saved


def load_tracker(run_dir: str | Path) -> tuple[tf.keras.Model, TrackerConfig, int]:
    """The run's tracker with the weights of its newest checkpoint, its config and that step."""
    cfg, saved = run_config(run_dir)
    found = local_checkpoints(Path(run_dir) / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first")
    step, prefix = found[-1]
    model = build_tracker(saved["image_size"], cfg.width, cfg.norm)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return model, cfg, step


def evaluate_tracker(
    run_dir: str | Path,
    frames: LabelledFrames,
    threshold: float | None = None,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Tip error, PCK and bifurcation P/R/F1 of the run's newest checkpoint on `frames`.

    `threshold` and `tolerance` default to the run's own.
    """
    model, cfg, step = load_tracker(run_dir)
    size = model.input_shape[1]
    if len(frames) == 0:
        raise DataError("no labelled frames to evaluate the tracker on")
    if frames.size != size:
        raise DataError(
            f"frames of {frames.size} px for a tracker trained on {size} px; prepare them at {size}"
        )
    metrics, _ = score(
        model,
        frames,
        cfg.threshold if threshold is None else threshold,
        cfg.tolerance if tolerance is None else tolerance,
    )
    return {"step": step, **metrics}
