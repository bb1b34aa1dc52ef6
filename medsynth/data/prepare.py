"""`prepare`: any source → de-identified, patient-split, sharded training data (DESIGN §5).

Output: `<out>/datasets/<name>/<hash>/{manifest.json, shards/*.tfrecord, preview.png, quarantine.json}`,
built in a temporary directory and renamed into place (or uploaded, then marked, on `gs://`).

How it runs, and why:
1. List the source (sorted, so indices are stable). Nothing is decoded yet.
2. Scan pass (worker pool): every input's bytes are hashed and its header read — the format, the
   bit depth, and the patient/study/series *pre-hashes* (identifiers never leave a worker in clear).
   Bad inputs are quarantined here with a PHI-free reason.
3. `hash` = SHA-256 of the input content digests and the settings that change the output. When
   `<out>/datasets/<name>/<hash>/` is already complete it is reused ("reusing …") and nothing is decoded.
4. Patients (or studies, or series, when a file has no patient) are split into train/val by a seeded
   order of their salted hashes — never by frame, so a patient's loops all land in one split.
5. Decode pass (worker pool, `imap` with a bounded number of files in flight): frames are decoded,
   normalised, cropped and resized in the workers (`images.square_resize`), quantised, and streamed to
   one shard writer per split. Memory holds a few files' frames at a time, whatever the input count.
6. Fails with `DataError` only when fewer than `min_frames` good frames remain.

`builtin://phantom` renders `phantom_frames` frames at the image size directly (in parallel: each frame
is a pure function of its index); the result is marked synthetic.

This module runs the steps; the pieces live beside it: `prepare_config` (the settings and their
checks), `workers` (what the pool does per input, and the pool), `splits` (patient-level train/val),
`dataset_writer` (shards, manifest, quarantine list, preview).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medsynth import storage
from medsynth.data import deid
from medsynth.data.dataset_writer import (
    FORMAT_VERSION,
    Built,
    DatasetWriter,
    LabelReport,
    _model_scaling,
    _q,
    _write_outputs,
)
from medsynth.data.images import RESIZE_POLICY
from medsynth.data.keypoints import FramePoints
from medsynth.data.labels import frame_labels, labels_digest, match_labels
from medsynth.data.prepare_config import PrepareConfig
from medsynth.data.sources import Entry, Limits, Listing, open_source
from medsynth.data.splits import assign_splits, input_group
from medsynth.data.workers import Scan, _decode_task, _parallel, _phantom_task, _scan_task
from medsynth.errors import DataError
from medsynth.progress import Progress

log = logging.getLogger(__name__)


def prepare(cfg: PrepareConfig) -> Path | str:
    """Prepare `cfg.source` and return the data set directory (a `gs://` URI string when `out` is one)."""
    cfg.validate()
    limits = cfg.limits()
    scratch = None if storage.is_gcs(cfg.out) else Path(cfg.out)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    listing = open_source(cfg.source, limits, cache_dir=scratch)
    try:
        if listing.scheme == "builtin":
            return _prepare_phantom(cfg, listing)
        return _prepare_files(cfg, listing, limits)
    finally:
        listing.close()


def _prepare_phantom(cfg: PrepareConfig, listing: Listing) -> Path | str:
    from medsynth.data.phantom import patient_name
    from medsynth.sizes import check_size

    check_size(cfg.image_size, "--image-size")
    n, size, seed = cfg.phantom_frames, cfg.image_size, cfg.seed
    name = cfg.name or "phantom"
    settings = _settings(cfg, "uint8", {"phantom_frames": n})
    source_digest = f"builtin://phantom/{n}/{seed}"
    content_hash = _content_hash(source_digest, settings)
    hasher = deid.Hasher(hashlib.sha256(source_digest.encode()).hexdigest())
    per_patient = 8 * 2  # phantom_frames defaults: frames_per_loop=8, loops_per_patient=2
    patients = [
        hasher.hash("patient", deid.prehash("patient-id", patient_name(i)))
        for i in range(math.ceil(n / per_patient))
    ]
    splits = assign_splits(patients, cfg.val_fraction, seed)

    def build(root: Path) -> Built:
        out = DatasetWriter(root, np.dtype(np.uint8), cfg.shard_mb << 20)
        report = LabelReport("rendered by the phantom with its frames (every frame labelled)")
        jobs = ((i, size, seed) for i in range(n))
        with Progress(n, "prepare builtin://phantom", unit="frame") as bar:
            for _, pixels, patient, loop, frame, kp in _parallel(
                _phantom_task, jobs, n, _workers(cfg), (None, Limits()), chunksize=8
            ):
                p = hasher.hash("patient", deid.prehash("patient-id", patient))
                points = FramePoints.from_dict(kp)
                inside = points.inside(size)
                report.dropped_outside_crop += int((~inside).sum())
                out.add(splits.get(p, "train"), pixels[None], p, p, loop, frame, [points.keep(inside)])
                bar.update()
        source = listing.describe() | {"frames": n, "seed": seed}
        policy = "phantom frames are rendered at image_size as uint8 (MONOCHROME2)"
        return Built(out, [], source, True, {"policy": policy, **_model_scaling("uint8")}, report)

    return _finish(cfg, name, content_hash, settings, build, f"{n} phantom frames")


def _prepare_files(cfg: PrepareConfig, listing: Listing, limits: Limits) -> Path | str:
    entries = listing.entries
    if not entries:
        raise DataError(
            f"source {cfg.source} holds no DICOM or image files"
            + (f" ({listing.skipped} side-car files skipped)" if listing.skipped else "")
        )
    workers = _workers(cfg)
    init = (listing.reader, limits)
    scans = _scan(entries, workers, init)
    source_digest = _source_digest(entries, scans)
    good = [s for s in scans if s.problem is None]
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "uint16" if any(s.bits > 8 for s in good) else "uint8"
    settings = _settings(cfg, dtype)
    # Labels change the data set (its hash) but not the de-identification salt, so not the split either.
    content_hash = _content_hash(source_digest, settings, labels_digest(listing.labels))
    hasher = deid.Hasher(source_digest)
    name = cfg.name or "dataset"

    groups = {s.index: input_group(s, entries[s.index], hasher) for s in good}

    def decode_pass(
        root: Path, splits: dict[str, str], failed: dict[int, str]
    ) -> tuple[DatasetWriter, dict, LabelReport, list[dict]]:
        """Decode every good input not known to fail into per-split shards; returns what failed now."""
        out = DatasetWriter(root, np.dtype(dtype), cfg.shard_mb << 20)
        labels = match_labels(listing.labels, entries, hasher)
        report = LabelReport("COCO key-point files of the source", list(labels.names))
        report.ignored_points = labels.ignored_points
        failed_now: dict[int, str] = {}
        loop_ids: dict[str, int] = {}
        loop_frames: dict[int, int] = {}
        todo = [s for s in good if s.index not in failed]
        jobs = ((entries[s.index], dtype, cfg.image_size) for s in todo)
        with Progress(len(todo), "prepare: decode", unit="file") as bar:
            for index, frames, problem, original in _parallel(
                _decode_task, jobs, len(todo), workers, init, chunksize=1
            ):
                bar.update(postfix=f"{out.total} frames")
                if problem is not None:
                    failed_now[index] = problem
                    continue
                patient, study, loop_key = groups[index]
                loop = loop_ids.setdefault(loop_key, len(loop_ids))
                first = loop_frames.get(loop, 0)
                loop_frames[loop] = first + len(frames)
                points, dropped = frame_labels(
                    labels.by_input.get(index, []), original, cfg.image_size, labels, index
                )
                report.dropped_outside_crop += dropped
                out.add(splits[patient], frames, patient, study, loop, first, points)
        out.close()
        report.quarantined = len(labels.quarantine)
        return out, failed_now, report, labels.quarantine

    def build(root: Path) -> Built:
        failed: dict[int, str] = {}
        splits = assign_splits((g[0] for g in groups.values()), cfg.val_fraction, cfg.seed)
        out, failed_now, report, label_quarantine = decode_pass(root, splits, failed)
        failed.update(failed_now)
        if failed_now and min(out.frames.values()) == 0:
            # Files that pass the header check but fail to decode can leave a split without patients;
            # split again among the patients that have frames, and write again (rare: costs a second pass).
            alive = assign_splits(
                {groups[s.index][0] for s in good if s.index not in failed}, cfg.val_fraction, cfg.seed
            )
            if len(set(alive.values())) == 2:
                shutil.rmtree(root / "shards")
                out, _, report, label_quarantine = decode_pass(root, alive, failed)
        quarantine = [_q(hasher, entries[s.index], s.problem, "scan") for s in scans if s.problem]
        quarantine += [_q(hasher, entries[i], reason, "decode") for i, reason in failed.items()]
        if out.total < cfg.min_frames:
            raise _too_few_frames(cfg, out.total, quarantine, len(entries))
        quarantine.sort(key=lambda q: q["index"])
        quarantine += label_quarantine  # after the inputs, in label file order
        kinds: dict[str, int] = {}
        for s in good:
            if s.index not in failed:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
        source = listing.describe() | {"formats": kinds, "quarantined": len(quarantine)}
        normalisation = {
            "policy": "DICOM: modality LUT/rescale then VOI LUT/window (pydicom), [0, 1] over the VOI output "
            "range, else over the file's min-max (one mapping per cine loop); MONOCHROME1 inverted; "
            "colour to ITU-R 601 luma. PNG/JPEG/TIFF: / 255 (8 bit) or / 65535 (16 bit).",
            **_model_scaling(dtype),
        }
        return Built(out, quarantine, source, False, normalisation, report)

    return _finish(cfg, name, content_hash, settings, build, f"{len(good)} inputs")


def _scan(entries: list[Entry], workers: int, init: tuple) -> list[Scan]:
    """The scan pass: every input hashed and its header read, in source order."""
    scans: list[Scan] = []
    with Progress(len(entries), "prepare: scan", unit="file") as bar:
        for scan in _parallel(_scan_task, entries, len(entries), workers, init, chunksize=8):
            scans.append(scan)
            bar.update()
    return scans


def _source_digest(entries: list[Entry], scans: list[Scan]) -> str:
    """The inputs' identity: their (hashed) paths, sizes and content digests."""
    h = hashlib.sha256()
    for e, s in zip(entries, scans, strict=True):
        h.update(f"{hashlib.sha256(e.rel.encode()).hexdigest()}:{e.size}:{s.digest}\n".encode())
    return h.hexdigest()


def _too_few_frames(cfg: PrepareConfig, total: int, quarantine: list[dict], inputs: int) -> DataError:
    """The error for a source with fewer good frames than --min-frames, with its commonest reasons."""
    reasons: dict[str, int] = {}
    for q in quarantine:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    summary = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    return DataError(
        f"source {cfg.source}: only {total} good frames, "
        f"fewer than --min-frames {cfg.min_frames}; "
        f"{len(quarantine)} of {inputs} inputs quarantined" + (f" ({summary})" if summary else "")
    )


def _settings(cfg: PrepareConfig, dtype: str, extra: dict | None = None) -> dict:
    return {
        "image_size": cfg.image_size,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "dtype": dtype,
        "shard_mb": cfg.shard_mb,
        "resize": RESIZE_POLICY,
        **(extra or {}),
    }


def _content_hash(source_digest: str, settings: dict, labels: str | None = None) -> str:
    blob = json.dumps(
        {"format": FORMAT_VERSION, "source": source_digest, "settings": settings, "labels": labels},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dest(cfg: PrepareConfig, name: str, content_hash: str) -> str:
    out = str(cfg.out).rstrip("/")
    return f"{out}/datasets/{name}/{content_hash}"


def _complete(dest: str) -> bool:
    return storage.is_complete(dest)


def _finish(
    cfg: PrepareConfig, name: str, content_hash: str, settings: dict, build: Callable[[Path], Built],
    describe: str,
) -> Path | str:
    """The data set at its place in the storage layout: reused when complete, else built and written."""

    def write(root: Path) -> None:
        _write_outputs(root, cfg, name, content_hash, settings, build(root))

    dest = _dest(cfg, name, content_hash)
    if _complete(dest):
        log.info("reusing prepared data set %s (hash %s)", dest, content_hash)
        return dest if storage.is_gcs(dest) else Path(dest)
    if storage.is_gcs(dest):
        tmp = Path(tempfile.mkdtemp(prefix="medsynth-prepare-"))
        try:
            local = tmp / content_hash
            with storage.atomic_directory(local) as d:
                write(d)
            storage.publish_dir(local, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with storage.atomic_directory(dest) as d:
            write(d)
    log.info("prepared %s: %s", dest, describe)
    return dest if storage.is_gcs(dest) else Path(dest)


def _workers(cfg: PrepareConfig) -> int:
    return max(1, int(cfg.workers or os.cpu_count() or 1))
