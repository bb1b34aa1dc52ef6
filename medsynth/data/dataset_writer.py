"""A prepared data set as it is written: shards per split, manifest, quarantine list, preview.

`DatasetWriter` takes decoded frames as they come (one input at a time) and keeps only counts,
running statistics and a few preview frames; `_write_outputs` writes the files that describe the
shards once they are all written. Nothing here holds an identifier in clear: patients and studies
arrive salted and hashed (medsynth.data.deid).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsynth import __version__, storage
from medsynth.data import deid
from medsynth.data.coco import CONVENTION
from medsynth.data.images import RESIZE_POLICY
from medsynth.data.keypoints import CLASSES, MAX_POINTS, FramePoints
from medsynth.data.prepare_config import PrepareConfig
from medsynth.data.shards import Record, ShardWriter
from medsynth.data.sources import Entry

FORMAT_VERSION = 2  # bump when the stored bytes for the same input and settings change (2: key points)
SPLITS = ("train", "val")
PREVIEW_FRAMES = 16


class _Stats:
    """Running pixel statistics over stored values (exact sums in float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.s = self.ss = 0.0
        self.lo, self.hi = math.inf, -math.inf

    def add(self, frames: np.ndarray) -> None:
        x = frames.astype(np.float64)
        self.n += x.size
        self.s += float(x.sum())
        self.ss += float(np.square(x).sum())
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))

    def as_dict(self, top: float) -> dict:
        if not self.n:
            return {}
        mean = self.s / self.n
        std = math.sqrt(max(0.0, self.ss / self.n - mean * mean))
        return {
            "mean": mean,
            "std": std,
            "min": self.lo,
            "max": self.hi,
            "mean_unit": mean / top,
            "std_unit": std / top,
            "units": "stored values; *_unit = / dtype max",
        }


class DatasetWriter:
    """Shard writers, counts, statistics and preview frames of the data set being written."""

    def __init__(self, root: Path, dtype: np.dtype, shard_bytes: int) -> None:
        self.root, self.dtype = root, dtype
        self.writers = {s: ShardWriter(root / "shards", s, max_bytes=shard_bytes) for s in SPLITS}
        self.frames = {s: 0 for s in SPLITS}
        self.loops: dict[str, set[int]] = {s: set() for s in SPLITS}
        self.patients: dict[str, set[str]] = {s: set() for s in SPLITS}
        self.studies: dict[str, set[str]] = {s: set() for s in SPLITS}
        self.stats = _Stats()
        self.preview: list[np.ndarray] = []
        self._preview_loops: set[int] = set()
        self.labelled = {s: 0 for s in SPLITS}
        self.points = {c: 0 for c in CLASSES}
        self.dropped_over_max = 0  # key points beyond MAX_POINTS in one frame (the tip is always kept)

    def add(
        self,
        split: str,
        frames: np.ndarray,
        patient: str,
        study: str,
        loop: int,
        first_frame: int,
        keypoints: list[FramePoints | None] | None = None,
    ) -> None:
        """One input's frames (a loop, or one image) and their key points (None: unlabelled)."""
        w = self.writers[split]
        for k, image in enumerate(frames):
            kp = keypoints[k] if keypoints is not None else None
            if kp is not None:
                p, c, m, dropped = kp.padded(MAX_POINTS)
                kp = FramePoints.from_padded(p, c, m)
                self.dropped_over_max += dropped
                self.labelled[split] += 1
                for cls in kp.classes.tolist():
                    self.points[CLASSES[cls]] += 1
            w.write(Record(image, patient, study, loop, first_frame + k, kp))
        self.frames[split] += len(frames)
        self.loops[split].add(loop)
        self.patients[split].add(patient)
        self.studies[split].add(study)
        self.stats.add(frames)
        if split == "train" and len(self.preview) < PREVIEW_FRAMES and loop not in self._preview_loops:
            self._preview_loops.add(loop)
            self.preview.append(frames[0].copy())  # a copy: a view would keep the whole loop alive

    @property
    def total(self) -> int:
        return sum(self.frames.values())

    def close(self) -> list[dict]:
        return [shard for s in SPLITS for shard in self.writers[s].close()]


def _model_scaling(dtype: str) -> dict:
    top = np.iinfo(np.dtype(dtype)).max
    return {
        "stored": f"{dtype}: round({top} * v), v in [0, 1]",
        "to_model": f"x / {top / 2} - 1 (float32 in [-1, 1])",
    }


def _q(hasher: deid.Hasher, entry: Entry, reason: str, stage: str) -> dict:
    return {"index": entry.index, "name": hasher.name(entry.rel), "stage": stage, "reason": reason}


def _write_preview(path: Path, out: DatasetWriter, name: str, synthetic: bool) -> None:
    """A grid of the first frame of the first training loops, in 8 bits whatever is stored."""
    from medsynth.pictures import save_grid

    preview = np.stack(out.preview)
    if out.dtype != np.uint8:
        top = float(np.iinfo(out.dtype).max)
        preview = np.rint(preview.astype(np.float64) * (255.0 / top)).astype(np.uint8)
    title = f"{name}: {'synthetic phantom' if synthetic else 'de-identified'} training frames"
    save_grid(preview, path, title=title, synthetic=synthetic)


@dataclass
class LabelReport:
    """What the manifest says about where the key points came from and what was lost on the way."""

    source: str  # how labels were obtained, in words
    label_files: list[str] = field(default_factory=list)  # salted hashes of the label files' names
    dropped_outside_crop: int = 0
    ignored_points: int = 0  # labelled key points of names that are none of CLASSES
    quarantined: int = 0  # labels (an image entry's points, or a whole file) quarantined


def _keypoints_section(out: DatasetWriter, labels: LabelReport) -> dict:
    return {
        "classes": list(CLASSES),
        "convention": CONVENTION,
        "max_points": MAX_POINTS,
        "source": labels.source,
        "labelled_frames": dict(out.labelled),
        "points": dict(out.points),
        "dropped_outside_crop": labels.dropped_outside_crop,
        "dropped_over_max_points": out.dropped_over_max,
        "ignored_points": labels.ignored_points,
        "label_files": labels.label_files,
        "quarantined_labels": labels.quarantined,
    }


def _write_quarantine(root: Path, quarantine: list[dict]) -> None:
    storage.atomic_write_json(
        root / "quarantine.json",
        {
            "count": len(quarantine),
            "note": "index = position of the input in the source sorted by relative path (null for a "
            "label file's problem that names no input); name = salted one-way hash of that path, or of "
            "the label file's path for stage 'labels' (file names may hold PHI)",
            "entries": quarantine,
        },
    )


def _content_summary(out: DatasetWriter, labels: LabelReport) -> dict:
    """The manifest fields that describe what the shards hold (closes the shards)."""
    shards = out.close()
    top = float(np.iinfo(out.dtype).max)
    return {
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software": {"medsynth": __version__, **_versions()},
        "dtype": out.dtype.name,
        "frames": out.total,
        "splits": {
            s: {
                "frames": out.frames[s],
                "loops": len(out.loops[s]),
                "patients": sorted(out.patients[s]),
                "studies": sorted(out.studies[s]),
            }
            for s in SPLITS
        },
        "pixel_stats": out.stats.as_dict(top),
        "keypoints": _keypoints_section(out, labels),
        "shards": shards,
    }


@dataclass
class Built:
    """What a prepare pass made (its shards) and what the manifest says of it."""

    out: DatasetWriter
    quarantine: list[dict]
    source: dict
    synthetic: bool
    normalisation: dict
    labels: LabelReport


def _write_outputs(root: Path, cfg: PrepareConfig, name: str, content_hash: str, settings: dict,
                   built: Built) -> None:
    """Close the shards, then write the preview, the quarantine list and the manifest that lists them."""
    content = _content_summary(built.out, built.labels)
    if built.out.preview:
        _write_preview(root / "preview.png", built.out, name, built.synthetic)
    _write_quarantine(root, built.quarantine)
    manifest = {
        "name": name,
        "hash": content_hash,
        "synthetic": built.synthetic,
        "image_size": cfg.image_size,
        "channels": 1,
        "normalisation": built.normalisation,
        "resize": RESIZE_POLICY,
        "split_policy": "by patient (else study, else series, else file) via a seeded order of salted hashes",
        "source": built.source,
        "quarantined": len(built.quarantine),
        "settings": settings | {"min_frames": cfg.min_frames, "val_fraction": cfg.val_fraction},
        **content,
    }
    storage.atomic_write_json(root / "manifest.json", manifest)


def _versions() -> dict:
    import PIL
    import pydicom

    return {"pydicom": pydicom.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
