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
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsynth import __version__, storage
from medsynth.data import deid
from medsynth.data.images import RESIZE_POLICY, Decoded, ImageRejected, quantise, sniff
from medsynth.data.shards import DEFAULT_SHARD_BYTES, Record, ShardWriter
from medsynth.data.sources import Entry, Limits, Listing, Reader, TooLarge, open_source
from medsynth.errors import ConfigError, DataError
from medsynth.progress import Progress

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the stored bytes for the same input and settings change
SPLITS = ("train", "val")
PREVIEW_FRAMES = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class PrepareConfig:
    """Settings of one prepare step; everything marked (hash) changes the content hash."""

    source: str
    out: str
    image_size: int = 256  # (hash) side of the square stored frames
    name: str | None = None  # default: "phantom" for builtin://phantom, else "dataset"
    seed: int = 0  # (hash) split order; phantom content
    val_fraction: float = 0.1  # (hash) share of patients in the validation split
    min_frames: int = 8  # fail when fewer good frames remain
    phantom_frames: int = 512  # (hash, phantom only) size of builtin://phantom
    dtype: str = "auto"  # (hash) "auto" (uint16 when any input has > 8 bits), "uint8", "uint16"
    shard_mb: int = DEFAULT_SHARD_BYTES >> 20  # (hash) target shard size
    workers: int | None = None  # decoding processes; default: all cores
    max_file_mb: int = 1024  # bytes of one input file
    max_pixels_mb: int = 1024  # declared decoded size of one input, checked before decoding
    zip_max_ratio: float = 200.0
    zip_max_total_gb: float = 64.0

    def limits(self) -> Limits:
        return Limits(
            max_file_bytes=int(self.max_file_mb) << 20,
            max_decoded_bytes=int(self.max_pixels_mb) << 20,
            zip_max_ratio=float(self.zip_max_ratio),
            zip_max_total_bytes=int(self.zip_max_total_gb * 2**30),
        )

    def validate(self) -> None:
        if not isinstance(self.image_size, int) or not 8 <= self.image_size <= 4096:
            raise ConfigError(f"--image-size must be an integer between 8 and 4096, got {self.image_size!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if self.min_frames < 1:
            raise ConfigError(f"--min-frames must be >= 1, got {self.min_frames}")
        if self.phantom_frames < 1:
            raise ConfigError(f"--phantom-frames must be >= 1, got {self.phantom_frames}")
        if self.dtype not in ("auto", "uint8", "uint16"):
            raise ConfigError(f"dtype must be auto, uint8 or uint16, got {self.dtype!r}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {self.workers}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.name is not None and not _NAME.match(self.name):
            raise ConfigError(
                f"--name {self.name!r} must be 1-64 characters of letters, digits, '.', '_' or '-'"
            )


# --- worker side -----------------------------------------------------------------------------------
_READER: Reader | None = None
_LIMITS: Limits | None = None


def _init_worker(reader: Reader | None, limits: Limits) -> None:
    global _READER, _LIMITS
    _READER, _LIMITS = reader, limits
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(slots=True)
class Scan:
    index: int
    digest: str  # sha256 of the bytes (or of the listing problem)
    kind: str | None = None
    bits: int = 8
    frames: int = 1
    patient: str | None = None  # pre-hashes (see deid)
    study: str | None = None
    series: str | None = None
    problem: str | None = None


def _scan_task(entry: Entry) -> Scan:
    """Hash an input and read its header only."""
    if entry.problem:
        return Scan(
            entry.index, hashlib.sha256(f"problem:{entry.rel}".encode()).hexdigest(), problem=entry.problem
        )
    try:
        data = _READER.read(entry)
    except TooLarge:
        return Scan(entry.index, "toolarge", problem="file is over the size limit")
    except Exception as e:  # unreadable file, corrupt archive member
        return Scan(
            entry.index,
            f"unreadable:{type(e).__name__}",
            problem=f"cannot read the file ({type(e).__name__})",
        )
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return Scan(entry.index, digest, problem="empty file")
    kind = sniff(data[:132]) or ("dicom" if entry.rel.lower().endswith((".dcm", ".dicom")) else None)
    scan = Scan(entry.index, digest, kind)
    if kind is None:
        name = entry.rel.lower()
        scan.problem = (
            "archive inside the source (not read)"
            if name.endswith(".zip")
            else ("not a DICOM, PNG, JPEG or TIFF file")
        )
        return scan
    try:
        if kind == "dicom":
            from medsynth.data import dicom

            h = dicom.probe(data, _LIMITS.max_decoded_bytes)
            scan.bits, scan.frames, scan.patient, scan.study, scan.series = (
                h.bits,
                h.frames,
                h.patient,
                h.study,
                h.series,
            )
        else:
            from medsynth.data import images

            scan.bits = images.probe_image(data, _LIMITS.max_decoded_bytes)
            parent = os.path.dirname(entry.rel)
            # Image folders carry no header: a sub-folder is taken to be one patient's loop.
            key = deid.prehash("folder", parent) if parent else None
            scan.patient = scan.study = scan.series = key
    except ImageRejected as e:
        scan.problem = str(e)
    except Exception as e:  # a header no reader expected; the message could quote header values: not kept
        scan.problem = f"cannot read the header ({type(e).__name__})"
    return scan


def _decode_task(job: tuple[Entry, str, int]) -> tuple[int, np.ndarray | None, str | None]:
    entry, dtype, size = job
    try:
        data = _READER.read(entry)
        decoded = _decode_bytes(data, entry, size)
        return entry.index, quantise(decoded.frames, np.dtype(dtype)), None
    except TooLarge:
        return entry.index, None, "file is over the size limit"
    except ImageRejected as e:
        return entry.index, None, str(e)
    except MemoryError:
        return entry.index, None, "decoding ran out of memory"
    except Exception as e:  # a decoder bug or a file that changed since the scan: quarantine, go on
        return entry.index, None, f"cannot decode ({type(e).__name__})"


def _decode_bytes(data: bytes, entry: Entry, size: int) -> Decoded:
    kind = sniff(data[:132]) or ("dicom" if entry.rel.lower().endswith((".dcm", ".dicom")) else None)
    if kind == "dicom":
        from medsynth.data.dicom import read_dicom

        return read_dicom(data, size, _LIMITS.max_decoded_bytes)
    from medsynth.data.images import read_image

    return read_image(data, size, _LIMITS.max_decoded_bytes)


def _phantom_task(job: tuple[int, int, int]) -> tuple[int, np.ndarray, str, int, int]:
    from medsynth.data.phantom import render_frame

    index, size, seed = job
    f = render_frame(size, seed, index)
    return index, f.pixels, f.patient, f.loop, f.frame


# --- the pool --------------------------------------------------------------------------------------
def _parallel(
    fn: Callable[[Any], Any], items: Iterable[Any], n: int, workers: int, init: tuple, chunksize: int = 4
) -> Iterator[Any]:
    """`map` in order over a process pool, with at most a few chunks per worker in flight.

    `Pool.imap` alone submits every task up front and buffers results without bound when the consumer
    is slower; the semaphore keeps memory flat however many inputs there are. Small jobs run inline
    (starting processes would cost more than the work).
    """
    if workers <= 1 or n < 4 * workers or not _can_spawn():
        _init_worker(*init)
        yield from map(fn, items)
        return
    window = 2 * chunksize * workers
    gate = threading.Semaphore(window)
    stop = threading.Event()

    def gated() -> Iterator[Any]:
        for item in items:
            gate.acquire()
            if stop.is_set():
                return
            yield item

    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold TensorFlow threads
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=init)
    try:
        for result in pool.imap(fn, gated(), chunksize):
            gate.release()
            yield result
        pool.close()
    finally:
        stop.set()
        for _ in range(window + 1):
            gate.release()
        pool.terminate()
        pool.join()


def _can_spawn() -> bool:
    """Spawned workers re-import the main script; one read from stdin cannot be, and the pool would
    restart dying workers forever. Such callers (and only they) decode in-process."""
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def _workers(cfg: PrepareConfig) -> int:
    return max(1, int(cfg.workers or os.cpu_count() or 1))


# --- main side -------------------------------------------------------------------------------------
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


class _Output:
    """Shard writers, counts, statistics and preview frames of the data set being written."""

    def __init__(self, root: Path, hasher: deid.Hasher, dtype: np.dtype, shard_bytes: int) -> None:
        self.root, self.hasher, self.dtype = root, hasher, dtype
        self.writers = {s: ShardWriter(root / "shards", s, max_bytes=shard_bytes) for s in SPLITS}
        self.frames = {s: 0 for s in SPLITS}
        self.loops: dict[str, set[int]] = {s: set() for s in SPLITS}
        self.patients: dict[str, set[str]] = {s: set() for s in SPLITS}
        self.studies: dict[str, set[str]] = {s: set() for s in SPLITS}
        self.stats = _Stats()
        self.preview: list[np.ndarray] = []
        self._preview_loops: set[int] = set()

    def add(
        self, split: str, frames: np.ndarray, patient: str, study: str, loop: int, first_frame: int
    ) -> None:
        w = self.writers[split]
        for k, image in enumerate(frames):
            w.write(Record(image, patient, study, loop, first_frame + k))
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


def assign_splits(groups: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """train/val per group (patient hash), deterministic per seed; both splits get one when possible."""
    groups = sorted(set(groups))
    order = sorted(groups, key=lambda g: hashlib.sha256(f"split\x00{seed}\x00{g}".encode()).hexdigest())
    n_val = round(val_fraction * len(order))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return {g: ("val" if i < n_val else "train") for i, g in enumerate(order)}


def _content_hash(source_digest: str, settings: dict) -> str:
    blob = json.dumps(
        {"format": FORMAT_VERSION, "source": source_digest, "settings": settings}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _dest(cfg: PrepareConfig, name: str, content_hash: str) -> str:
    out = str(cfg.out).rstrip("/")
    return f"{out}/datasets/{name}/{content_hash}"


def _complete(dest: str) -> bool:
    return storage.is_complete(dest)


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


def _finish(
    cfg: PrepareConfig, name: str, content_hash: str, build: Callable[[Path], None], describe: str
) -> Path | str:
    dest = _dest(cfg, name, content_hash)
    if _complete(dest):
        log.info("reusing prepared data set %s (hash %s)", dest, content_hash)
        return dest if storage.is_gcs(dest) else Path(dest)
    if storage.is_gcs(dest):
        tmp = Path(tempfile.mkdtemp(prefix="medsynth-prepare-"))
        try:
            local = tmp / content_hash
            with storage.atomic_directory(local) as d:
                build(d)
            storage.publish_dir(local, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    else:
        with storage.atomic_directory(dest) as d:
            build(d)
    log.info("prepared %s: %s", dest, describe)
    return dest if storage.is_gcs(dest) else Path(dest)


def _prepare_phantom(cfg: PrepareConfig, listing: Listing) -> Path | str:
    from medsynth.data.phantom import check_size, patient_name

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

    def build(root: Path) -> None:
        out = _Output(root, hasher, np.dtype(np.uint8), cfg.shard_mb << 20)
        jobs = ((i, size, seed) for i in range(n))
        with Progress(n, "prepare builtin://phantom", unit="frame") as bar:
            for _, pixels, patient, loop, frame in _parallel(
                _phantom_task, jobs, n, _workers(cfg), (None, Limits()), chunksize=8
            ):
                p = hasher.hash("patient", deid.prehash("patient-id", patient))
                out.add(splits.get(p, "train"), pixels[None], p, p, loop, frame)
                bar.update()
        source = listing.describe() | {"frames": n, "seed": seed}
        _write_outputs(
            root,
            cfg,
            name,
            content_hash,
            out,
            [],
            source,
            settings,
            synthetic=True,
            normalisation={
                "policy": "phantom frames are rendered at image_size as uint8 (MONOCHROME2)",
                **_model_scaling("uint8"),
            },
        )

    return _finish(cfg, name, content_hash, build, f"{n} phantom frames")


def _model_scaling(dtype: str) -> dict:
    top = np.iinfo(np.dtype(dtype)).max
    return {
        "stored": f"{dtype}: round({top} * v), v in [0, 1]",
        "to_model": f"x / {top / 2} - 1 (float32 in [-1, 1])",
    }


def _prepare_files(cfg: PrepareConfig, listing: Listing, limits: Limits) -> Path | str:
    entries = listing.entries
    if not entries:
        raise DataError(
            f"source {cfg.source} holds no DICOM or image files"
            + (f" ({listing.skipped} side-car files skipped)" if listing.skipped else "")
        )
    workers = _workers(cfg)
    init = (listing.reader, limits)
    scans: list[Scan] = []
    with Progress(len(entries), "prepare: scan", unit="file") as bar:
        for scan in _parallel(_scan_task, entries, len(entries), workers, init, chunksize=8):
            scans.append(scan)
            bar.update()

    h = hashlib.sha256()
    for e, s in zip(entries, scans, strict=True):
        h.update(f"{hashlib.sha256(e.rel.encode()).hexdigest()}:{e.size}:{s.digest}\n".encode())
    source_digest = h.hexdigest()
    good = [s for s in scans if s.problem is None]
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = "uint16" if any(s.bits > 8 for s in good) else "uint8"
    settings = _settings(cfg, dtype)
    content_hash = _content_hash(source_digest, settings)
    hasher = deid.Hasher(source_digest)
    name = cfg.name or "dataset"

    # Groups: patient → else study → else series → else the file itself.
    def group(s: Scan, e: Entry) -> tuple[str, str, str]:
        file_key = deid.prehash("file", e.rel)
        patient = s.patient or s.study or s.series or file_key
        study = s.study or s.series or file_key
        loop = file_key if (s.frames > 1 or not s.series) else s.series
        return hasher.hash("patient", patient), hasher.hash("study", study), loop

    groups = {s.index: group(s, entries[s.index]) for s in good}

    def decode_pass(root: Path, splits: dict[str, str], failed: dict[int, str]) -> tuple[_Output, dict]:
        """Decode every good input not known to fail into per-split shards; returns what failed now."""
        out = _Output(root, hasher, np.dtype(dtype), cfg.shard_mb << 20)
        failed_now: dict[int, str] = {}
        loop_ids: dict[str, int] = {}
        loop_frames: dict[int, int] = {}
        todo = [s for s in good if s.index not in failed]
        jobs = ((entries[s.index], dtype, cfg.image_size) for s in todo)
        with Progress(len(todo), "prepare: decode", unit="file") as bar:
            for index, frames, problem in _parallel(
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
                out.add(splits[patient], frames, patient, study, loop, first)
        out.close()
        return out, failed_now

    def build(root: Path) -> None:
        failed: dict[int, str] = {}
        splits = assign_splits((g[0] for g in groups.values()), cfg.val_fraction, cfg.seed)
        out, failed_now = decode_pass(root, splits, failed)
        failed.update(failed_now)
        if failed_now and min(out.frames.values()) == 0:
            # Files that pass the header check but fail to decode can leave a split without patients;
            # split again among the patients that have frames, and write again (rare: costs a second pass).
            alive = assign_splits(
                {groups[s.index][0] for s in good if s.index not in failed}, cfg.val_fraction, cfg.seed
            )
            if len(set(alive.values())) == 2:
                shutil.rmtree(root / "shards")
                out, _ = decode_pass(root, alive, failed)
        quarantine = [_q(hasher, entries[s.index], s.problem, "scan") for s in scans if s.problem]
        quarantine += [_q(hasher, entries[i], reason, "decode") for i, reason in failed.items()]
        if out.total < cfg.min_frames:
            reasons: dict[str, int] = {}
            for q in quarantine:
                reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
            summary = "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
            raise DataError(
                f"source {cfg.source}: only {out.total} good frames, "
                f"fewer than --min-frames {cfg.min_frames}; "
                f"{len(quarantine)} of {len(entries)} inputs quarantined"
                + (f" ({summary})" if summary else "")
            )
        quarantine.sort(key=lambda q: q["index"])
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
        _write_outputs(
            root,
            cfg,
            name,
            content_hash,
            out,
            quarantine,
            source,
            settings,
            synthetic=False,
            normalisation=normalisation,
        )

    return _finish(cfg, name, content_hash, build, f"{len(good)} inputs")


def _q(hasher: deid.Hasher, entry: Entry, reason: str, stage: str) -> dict:
    return {"index": entry.index, "name": hasher.name(entry.rel), "stage": stage, "reason": reason}


def _write_outputs(
    root: Path,
    cfg: PrepareConfig,
    name: str,
    content_hash: str,
    out: _Output,
    quarantine: list[dict],
    source: dict,
    settings: dict,
    *,
    synthetic: bool,
    normalisation: dict,
) -> None:
    from medsynth.pictures import save_grid

    shards = out.close()
    top = float(np.iinfo(out.dtype).max)
    if out.preview:
        preview = np.stack(out.preview)
        if out.dtype != np.uint8:
            preview = np.rint(preview.astype(np.float64) * (255.0 / top)).astype(np.uint8)
        title = f"{name}: {'synthetic phantom' if synthetic else 'de-identified'} training frames"
        save_grid(preview, root / "preview.png", title=title, synthetic=synthetic)
    storage.atomic_write_json(
        root / "quarantine.json",
        {
            "count": len(quarantine),
            "note": "index = position of the input in the source sorted by relative path; "
            "name = salted one-way hash of that path (file names may hold PHI)",
            "entries": quarantine,
        },
    )
    manifest = {
        "format": FORMAT_VERSION,
        "name": name,
        "hash": content_hash,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software": {"medsynth": __version__, **_versions()},
        "synthetic": synthetic,
        "image_size": cfg.image_size,
        "channels": 1,
        "dtype": out.dtype.name,
        "normalisation": normalisation,
        "resize": RESIZE_POLICY,
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
        "split_policy": "by patient (else study, else series, else file) via a seeded order of salted hashes",
        "pixel_stats": out.stats.as_dict(top),
        "source": source,
        "quarantined": len(quarantine),
        "shards": shards,
        "settings": settings | {"min_frames": cfg.min_frames, "val_fraction": cfg.val_fraction},
    }
    storage.atomic_write_json(root / "manifest.json", manifest)


def _versions() -> dict:
    import PIL
    import pydicom

    return {"pydicom": pydicom.__version__, "pillow": PIL.__version__, "numpy": np.__version__}
