"""What `prepare`'s worker processes do with one input each, and the bounded pool that runs them.

A worker reads its input through the source's `Reader` and hands back only what the main process
needs: a scan (content digest, format, bit depth, *pre-hashed* identifiers — never PHI in clear) or
the decoded, quantised frames. Whatever goes wrong with one input comes back as a PHI-free reason to
quarantine it; the run goes on.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsynth.data import deid
from medsynth.data.images import Decoded, ImageRejected, quantise, sniff
from medsynth.data.sources import Entry, Limits, Reader, TooLarge

_READER: Reader | None = None
_LIMITS: Limits | None = None


def _init_worker(reader: Reader | None, limits: Limits) -> None:
    global _READER, _LIMITS
    _READER, _LIMITS = reader, limits
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(slots=True)
class Scan:
    """What the scan pass learns of one input without decoding it (or why it is quarantined)."""

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


def _decode_task(job: tuple[Entry, str, int]) -> tuple[int, np.ndarray | None, str | None, np.ndarray | None]:
    """Decode, resize and quantise one input: (index, frames, None, original (height, width) per frame),
    or (index, None, the reason, None). Key points follow the crop from the original sizes."""
    entry, dtype, size = job
    try:
        data = _READER.read(entry)
        decoded = _decode_bytes(data, entry, size)
        return entry.index, quantise(decoded.frames, np.dtype(dtype)), None, decoded.original
    except TooLarge:
        return entry.index, None, "file is over the size limit", None
    except ImageRejected as e:
        return entry.index, None, str(e), None
    except MemoryError:
        return entry.index, None, "decoding ran out of memory", None
    except Exception as e:  # a decoder bug or a file that changed since the scan: quarantine, go on
        return entry.index, None, f"cannot decode ({type(e).__name__})", None


def _decode_bytes(data: bytes, entry: Entry, size: int) -> Decoded:
    kind = sniff(data[:132]) or ("dicom" if entry.rel.lower().endswith((".dcm", ".dicom")) else None)
    if kind == "dicom":
        from medsynth.data.dicom import read_dicom

        return read_dicom(data, size, _LIMITS.max_decoded_bytes)
    from medsynth.data.images import read_image

    return read_image(data, size, _LIMITS.max_decoded_bytes)


def _phantom_task(job: tuple[int, int, int]) -> tuple[int, np.ndarray, str, int, int, dict]:
    """Render phantom frame `index`: (index, pixels, patient, loop, frame, key points)."""
    from medsynth.data.phantom import render_frame

    index, size, seed = job
    f = render_frame(size, seed, index)
    return index, f.pixels, f.patient, f.loop, f.frame, f.keypoints


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
