"""Key points of user data on their way through `prepare`: COCO label files matched to the inputs they
name, then to decoded frames, then through the same crop and resize as the pixels.

What can go wrong is quarantined with a PHI-free reason (stage `labels` in quarantine.json) and the
frame stays, unlabelled — a label is never moved, clamped or guessed:
- before decoding (`match_labels`): a malformed file (all of its labels), an image entry that names no
  input of the source, coordinates outside the image entry's declared width and height, broken
  references inside the file;
- after decoding (`frame_labels`): a declared width/height that is not the decoded frame's, a frame
  index past the file's last frame, a multi-frame file labelled without a frame index, a frame
  labelled twice differently.
Key points outside the centre crop are dropped and counted (`keypoints.follow_crop_resize`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from medsynth.data import deid
from medsynth.data.coco import CocoLabel, read_coco, resolve
from medsynth.data.keypoints import FramePoints, follow_crop_resize
from medsynth.data.sources import Entry, LabelFile


@dataclass
class Pending:
    """A label that names an input, waiting for its frames to be decoded."""

    file: int  # index into the source's label files
    frame: int | None
    label: CocoLabel


@dataclass
class SourceLabels:
    """The label files of a source, matched to its inputs."""

    names: list[str]  # salted hashes of the label files' paths, for the manifest and quarantine.json
    by_input: dict[int, list[Pending]] = field(default_factory=dict)
    quarantine: list[dict] = field(default_factory=list)
    ignored_points: int = 0

    def problem(self, file: int, reason: str, index: int | None = None) -> None:
        self.quarantine.append(
            {"index": index, "name": self.names[file], "stage": "labels", "reason": reason}
        )


def labels_digest(files: list[LabelFile]) -> str | None:
    """The label files' identity (hashed paths and content digests): part of the data set's content hash,
    so that changed labels make a new data set. None without label files."""
    if not files:
        return None
    h = hashlib.sha256()
    for lf in files:
        h.update(
            f"{hashlib.sha256(lf.rel.encode()).hexdigest()}:{hashlib.sha256(lf.data).hexdigest()}\n".encode()
        )
    return h.hexdigest()


def match_labels(files: list[LabelFile], entries: list[Entry], hasher: deid.Hasher) -> SourceLabels:
    """Read every label file and match its image entries to the source's inputs."""
    out = SourceLabels([hasher.name(lf.rel) for lf in files])
    rels = {e.rel: e.index for e in entries}
    for k, lf in enumerate(files):
        coco = read_coco(lf.data)
        out.ignored_points += coco.ignored_points
        for reason in coco.problems:
            out.problem(k, reason)
        for (file_name, frame), label in coco.labels.items():
            index, why = resolve(file_name, lf.rel, rels)
            if index is None:
                out.problem(k, f"{label.entry}: {why}")
                continue
            out.by_input.setdefault(index, []).append(Pending(k, frame, label))
    return out


def frame_labels(
    pending: list[Pending], original: np.ndarray, size: int, labels: SourceLabels, index: int
) -> tuple[list[FramePoints | None], int]:
    """Key points of each decoded frame of input `index` (None: unlabelled), moved through the crop and
    resize to `size`, and how many fell outside the crop. Problems go to `labels.quarantine`."""
    n = len(original)
    out: list[FramePoints | None] = [None] * n
    by_frame: dict[int, list[Pending]] = {}
    for p in pending:
        frame = p.frame
        if frame is None:
            if n > 1:
                labels.problem(
                    p.file, f"{p.label.entry}: a file of {n} frames labelled without a frame", index
                )
                continue
            frame = 0
        if frame >= n:
            labels.problem(p.file, f"{p.label.entry}: frame {frame} is past the file's {n} frames", index)
            continue
        h, w = (int(v) for v in original[frame])
        if (p.label.width, p.label.height) != (w, h):
            labels.problem(
                p.file,
                f"{p.label.entry}: declared size {p.label.width}x{p.label.height} is not the file's {w}x{h}",
                index,
            )
            continue
        by_frame.setdefault(frame, []).append(p)
    dropped = 0
    for frame, ps in sorted(by_frame.items()):
        if any(not _same(ps[0].label.points, q.label.points) for q in ps[1:]):
            for q in ps:
                labels.problem(q.file, f"{q.label.entry}: frame labelled more than once, differently", index)
            continue
        h, w = (int(v) for v in original[frame])
        out[frame], lost = follow_crop_resize(ps[0].label.points, h, w, size)
        dropped += lost
    return out, dropped


def _same(a: FramePoints, b: FramePoints) -> bool:
    return np.array_equal(a.points, b.points) and np.array_equal(a.classes, b.classes)
