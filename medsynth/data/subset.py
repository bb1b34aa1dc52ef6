"""A labelled subset of a prepared data set: n seeded labelled training frames, and the parent's val split.

The utility experiment trains its generator and its tracker on "N real labelled frames" and evaluates on
held-out real frames. Giving both the same small data set — not the parent with a frame count — makes
that true by construction: nothing of the parent's other training frames, labelled or not, and nothing
of val can reach training. The subset is an ordinary prepared data set (same manifest, same shards,
`shards.verify` holds), so every reader works on it; its manifest's `subset` section records the
parent's hash, n, the seed and which of the parent's training frames were taken.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from medsynth.data.input import _shard_files, labelled_count, load_manifest
from medsynth.data.shards import DEFAULT_SHARD_BYTES, read_records
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
    blob = {
        "format": FORMAT_VERSION,
        "parent": parent["hash"],
        "n": n,
        "seed": seed,
        "kind": "labelled-subset",
    }
    content_hash = hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{parent['name']}-labelled{n}-seed{seed}"
    dest = Path(out) / "datasets" / name / content_hash
    if storage.is_complete(dest):
        log.info("reusing labelled subset %s (hash %s)", dest, content_hash)
        return dest
    # Which labelled frames (counted in shard order) to take.
    chosen = set(np.random.default_rng(seed).choice(available, size=n, replace=False).tolist())
    shard_bytes = int(parent.get("settings", {}).get("shard_mb", DEFAULT_SHARD_BYTES >> 20)) << 20
    with storage.atomic_directory(dest) as root:
        writer = DatasetWriter(root, np.dtype(parent["dtype"]), shard_bytes)
        positions = []  # of the chosen frames in the parent's train split, in shard order
        labelled = 0
        for split in SPLITS:
            position = 0
            for file in _shard_files(dataset_dir, parent, split):
                for r in read_records(file):
                    take = split == "val"
                    if split == "train" and r.keypoints is not None:
                        take = labelled in chosen
                        labelled += 1
                        if take:
                            positions.append(position)
                    if take:
                        writer.add(split, r.image[None], r.patient, r.study, r.loop, r.frame, [r.keypoints])
                    position += 1
        if len(positions) != n or writer.frames["val"] != parent["splits"]["val"]["frames"]:
            raise DataError(f"shards of {dataset_dir} do not match its manifest; prepare the source again")
        report = LabelReport(
            f"{n} labelled training frames of data set {parent['hash']} (seed {seed}), its val split whole",
            list(parent.get("keypoints", {}).get("label_files", [])),
        )
        content = _content_summary(writer, report)
        if writer.preview:
            _write_preview(root / "preview.png", writer, name, bool(parent.get("synthetic")))
        _write_quarantine(root, [])
        keep = {
            k: v for k, v in parent.items() if k not in content and k not in ("name", "hash", "quarantined")
        }
        manifest = keep | content
        manifest |= {
            "name": name,
            "hash": content_hash,
            "quarantined": 0,
            "subset": {
                "parent": parent["hash"],
                "parent_name": parent["name"],
                "n": n,
                "seed": seed,
                "train_indices": positions,
                "indices_note": "positions in the parent's train split, in shard order",
            },
        }
        storage.atomic_write_json(root / "manifest.json", manifest)
    log.info("wrote labelled subset %s: %d train frames, %d val frames", dest, n, writer.frames["val"])
    return dest
