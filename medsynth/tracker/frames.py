"""The labelled frames a tracker run learns from and is judged on, read from where they are kept.

Real frames come from a prepared data set's patient-level split (`data.input.labelled_frames`: the
train split to learn from, the val split to judge on), synthetic ones from a folder of frames with
their COCO key-point file (`data.coco.read_labelled_folder`, what `medsynth generate --keypoints`
writes). Whatever the folder's file says, frames given as synthetic are marked synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.data.keypoints import LabelledFrames


@dataclass
class RunFrames:
    real: LabelledFrames
    synthetic: LabelledFrames | None
    val: LabelledFrames
    source: dict[str, Any]  # where they came from, for the run's config.json


def dataset_frames(
    data: str | Path, split: str = "val", n: int | None = None, seed: int = 0
) -> LabelledFrames:
    """The labelled frames of a prepared data set's split (all, or a seeded sample of `n`)."""
    from medsynth.data.input import labelled_frames

    return labelled_frames(data, split=split, n=n, seed=seed)


def synthetic_frames(folder: str | Path, size: int) -> LabelledFrames:
    """A folder of generated frames and their COCO key points, at `size` px, marked synthetic."""
    from medsynth.data.coco import read_labelled_folder

    frames = read_labelled_folder(folder, size)
    frames.synthetic = True
    return frames


def run_frames(
    data: str | Path, synthetic: str | Path | None = None, n_real: int | None = None, seed: int = 0
) -> RunFrames:
    """A run's frames: `n_real` (default all) labelled train-split frames of `data` (a seeded sample),
    the synthetic folder's frames at their size, and every labelled val-split frame to judge on."""
    real = dataset_frames(data, "train", n_real, seed)
    return RunFrames(
        real,
        synthetic_frames(synthetic, real.size) if synthetic else None,
        dataset_frames(data, "val"),
        {
            "data": str(data),
            "n_real": n_real,
            "synthetic": str(synthetic) if synthetic else None,
            "seed": seed,
        },
    )
