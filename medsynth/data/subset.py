"""A labelled subset of a prepared data set: n seeded labelled training frames, and the parent's val split.

The utility experiment trains its generator and its tracker on "N real labelled frames" and evaluates on
held-out real frames. Giving both the same small data set — not the parent with a frame count — makes
that true by construction: nothing of the parent's other training frames, labelled or not, and nothing
of val can reach training. The subset is an ordinary prepared data set (same manifest, same shards,
`shards.verify` holds), so every reader works on it; its manifest's `subset` section records the
parent's hash, n, the seed and which of the parent's training frames were taken.

The parent's other training frames are the *unlabelled* ones of the experiment (`unlabelled_images`:
pixels only). A tracker's key points for them make `write_pseudo_labelled`'s data set: every training
frame with a layout, for a key-point-conditioned generator that learns from all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsynth import storage
from medsynth.data.dataset_writer import (
    FORMAT_VERSION,
    SPLITS,
    DatasetWriter,
    LabelReport,
    _content_summary,
    _write_preview,
    _write_quarantine,
)
from medsynth.data.input import _dtype, _load_split, _shard_files, as_uint8, labelled_count, load_manifest
from medsynth.data.keypoints import FramePoints
from medsynth.data.shards import DEFAULT_SHARD_BYTES, Record, read_records
from medsynth.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def write_labelled_subset(dataset_dir: str | Path, n: int, seed: int, out: str | Path) -> Path:
    """Write (or reuse) the subset under `<out>/datasets/<parent name>-labelled<n>-seed<seed>/<hash>/`
    and return that directory. Its train split is n labelled frames of the parent's train split drawn
    with `seed`; its val split is the parent's val split, every frame, unchanged."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the subset's size must be an integer >= 1, got {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"the subset's seed must be an integer >= 0, got {seed!r}")
    dataset_dir = Path(dataset_dir)
    parent = load_manifest(dataset_dir)
    available = labelled_count(parent, "train")
    if n > available:
        raise DataError(
            f"data set {dataset_dir} has {available} labelled train frames, fewer than the {n} asked for"
        )
    blob = {"parent": parent["hash"], "n": n, "seed": seed, "kind": "labelled-subset"}
    name = f"{parent['name']}-labelled{n}-seed{seed}"
    # Which labelled frames (counted in shard order) to take.
    chosen = set(np.random.default_rng(seed).choice(available, size=n, replace=False).tolist())
    positions: list[int] = []  # of the chosen frames in the parent's train split, in shard order
    labelled = [0]  # labelled train frames passed so far

    def pick(position: int, record: Record) -> tuple[bool, FramePoints | None]:
        if record.keypoints is None:
            return False, None
        take = labelled[0] in chosen
        labelled[0] += 1
        if take:
            positions.append(position)
        return take, record.keypoints

    def section() -> dict:
        return {
            "subset": {
                "parent": parent["hash"],
                "parent_name": parent["name"],
                "n": n,
                "seed": seed,
                "train_indices": positions,
                "indices_note": "positions in the parent's train split, in shard order",
            }
        }

    note = f"{n} labelled training frames of data set {parent['hash']} (seed {seed}), its val split whole"
    return _write_derived(dataset_dir, parent, Path(out), name, blob, n, pick, section, note)


def subset_positions(dataset_dir: str | Path, subset_dir: str | Path) -> list[int]:
    """Positions (shard order) in the parent's train split of the frames a labelled subset took."""
    parent, subset = load_manifest(dataset_dir), load_manifest(subset_dir)
    section = subset.get("subset") or {}
    if section.get("parent") != parent["hash"]:
        raise ConfigError(f"{subset_dir} is not a labelled subset of data set {dataset_dir}")
    return [int(i) for i in section["train_indices"]]


def unlabelled_images(dataset_dir: str | Path, subset_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The parent's training frames the subset did not take, as uint8 [m, S, S], and their positions
    in the parent's train split. Images only: their labels, if any, are never parsed."""
    dataset_dir = Path(dataset_dir)
    parent = load_manifest(dataset_dir)
    own = subset_positions(dataset_dir, subset_dir)
    size, frames = int(parent["image_size"]), int(parent["splits"]["train"]["frames"])
    pixels = _load_split(_shard_files(dataset_dir, parent, "train"), size, _dtype(parent), frames)
    positions = np.setdiff1d(np.arange(frames), own)
    return as_uint8(pixels[positions]), positions


def write_pseudo_labelled(
    dataset_dir: str | Path, subset_dir: str | Path, labels: dict[int, FramePoints], out: str | Path
) -> Path:
    """Write (or reuse) every training frame of the parent with a layout: the subset's N frames with
    their own labels, each other frame with the key points `labels` gives it (by its position in the
    parent's train split; whatever label the parent holds for it is dropped). The val split is the
    parent's, whole. Under `<out>/datasets/<subset name>-pseudo/<hash>/`."""
    dataset_dir = Path(dataset_dir)
    parent = load_manifest(dataset_dir)
    subset = load_manifest(subset_dir)
    own = set(subset_positions(dataset_dir, subset_dir))
    frames = int(parent["splits"]["train"]["frames"])
    missing = frames - len(own) - len(set(labels) - own)
    if missing or own & set(labels):
        raise DataError(
            f"pseudo labels for {len(labels)} frames: every one of the {frames - len(own)} training frames "
            f"of {dataset_dir} outside the subset needs one, and the subset's own none"
        )
    digest = hashlib.sha256(
        json.dumps({str(k): v.to_dict() for k, v in sorted(labels.items())}, sort_keys=True).encode()
    ).hexdigest()
    blob = {"parent": parent["hash"], "subset": subset["hash"], "labels": digest, "kind": "pseudo-labelled"}

    def pick(position: int, record: Record) -> tuple[bool, FramePoints | None]:
        return True, record.keypoints if position in own else labels[position]

    def section() -> dict:
        guessed = {"parent": parent["hash"], "subset": subset["hash"], "frames": len(labels)}
        return {"pseudo_labelled": guessed}

    note = (
        f"every training frame of data set {parent['hash']}: {len(own)} labelled, {len(labels)} with "
        "key points from a tracker; its val split whole"
    )
    return _write_derived(
        dataset_dir, parent, Path(out), f"{subset['name']}-pseudo", blob, frames, pick, section, note
    )


def _write_derived(
    dataset_dir: Path,
    parent: dict,
    out: Path,
    name: str,
    blob: dict,
    train_frames: int,
    pick: Callable[[int, Record], tuple[bool, FramePoints | None]],
    section: Callable[[], dict],
    note: str,
) -> Path:
    """A data set made of the parent's records: the train records `pick(position, record)` takes, with
    the key points it gives, and the whole val split; reused when its content hash (of `blob`) exists."""
    content_hash = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, **blob}, sort_keys=True).encode())
    content_hash = content_hash.hexdigest()[:16]
    dest = out / "datasets" / name / content_hash
    if storage.is_complete(dest):
        log.info("reusing data set %s (hash %s)", dest, content_hash)
        return dest
    shard_bytes = int(parent.get("settings", {}).get("shard_mb", DEFAULT_SHARD_BYTES >> 20)) << 20
    with storage.atomic_directory(dest) as root:
        writer = DatasetWriter(root, np.dtype(parent["dtype"]), shard_bytes)
        for split in SPLITS:
            for position, r in enumerate(
                r for file in _shard_files(dataset_dir, parent, split) for r in read_records(file)
            ):
                take, keypoints = (True, r.keypoints) if split == "val" else pick(position, r)
                if take:
                    writer.add(split, r.image[None], r.patient, r.study, r.loop, r.frame, [keypoints])
        val_frames = parent["splits"]["val"]["frames"]
        if writer.frames["train"] != train_frames or writer.frames["val"] != val_frames:
            raise DataError(f"shards of {dataset_dir} do not match its manifest; prepare the source again")
        report = LabelReport(note, list(parent.get("keypoints", {}).get("label_files", [])))
        content = _content_summary(writer, report)
        if writer.preview:
            _write_preview(root / "preview.png", writer, name, bool(parent.get("synthetic")))
        _write_quarantine(root, [])
        keep = {
            k: v for k, v in parent.items() if k not in content and k not in ("name", "hash", "quarantined")
        }
        manifest = keep | content | {"name": name, "hash": content_hash, "quarantined": 0} | section()
        storage.atomic_write_json(root / "manifest.json", manifest)
    log.info("wrote data set %s: %d train frames, %d val frames", dest, train_frames, writer.frames["val"])
    return dest
