"""Many files at once: parallel uploads, downloads, server-side copies and deletes, and directory mirrors.

Transfer-manager workers retry like every other call; each transferred file is then checked against the
size and CRC32C object storage reports, and transferred again (up to `INTEGRITY_ROUNDS` in all) if it
does not match. Markers always go last and old markers first, so a reader never trusts a half copy.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medsynth.errors import StorageError
from medsynth.storage.checksums import INTEGRITY_ROUNDS, blob_matches, crc32c_file, is_corruption
from medsynth.storage.client import gcs_client, retry
from medsynth.storage.errors import storage_error, storage_errors
from medsynth.storage.local import list_local, replace_dir
from medsynth.storage.objects import fresh, list_gcs, restartable, unverified, write_object
from medsynth.storage.uris import MARKER, Loc, is_marker, markers_last

log = logging.getLogger("medsynth.storage")

# Transfer-manager threads (not processes: many small files, and no client pickling). Whole files per
# request: the XML multipart upload of `upload_chunks_concurrently` answers 501 on the emulator.
WORKERS = 8
_PROGRESS_FILES, _PROGRESS_BYTES = 500, 256 << 20  # show a progress bar above either


def _progress(desc: str, files: int, nbytes: int) -> Any:
    if files < _PROGRESS_FILES and nbytes < _PROGRESS_BYTES:
        return contextlib.nullcontext(None)
    from medsynth.progress import Progress

    return Progress(files, desc, unit="file")


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def download_blobs(pairs: list[tuple[Any, Path]], loc: Loc) -> None:
    """Download (listed blob, local path) pairs in parallel, each checked against its size and CRC32C."""
    from google.cloud.storage import transfer_manager as tm

    for _, path in pairs:
        path.parent.mkdir(parents=True, exist_ok=True)
    todo = pairs
    total = sum(int(b.size or 0) for b, _ in pairs)
    with _progress(f"download {loc.uri}", len(pairs), total) as bar:
        for round_ in range(INTEGRITY_ROUNDS):
            bad: list[tuple[Any, Path]] = []
            for batch in _batches(todo, WORKERS * 8):
                results = tm.download_many([(fresh(b), str(p)) for b, p in batch],
                                           download_kwargs={"retry": retry(), "raw_download": True},
                                           worker_type=tm.THREAD, max_workers=WORKERS, raise_exception=False)
                for (blob, path), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        if not is_corruption(result):
                            raise storage_error(Loc(loc.bucket, blob.name), result, "download")
                        bad.append((blob, path))
                    elif not blob_matches(blob, path.stat().st_size, crc32c_file(path)):
                        bad.append((blob, path))
                    elif bar is not None:
                        bar.update()
            if not bad:
                return
            log.warning("%d file(s) from %s did not match their checksum; downloading again (round %d)",
                        len(bad), loc.uri, round_ + 2)
            todo = bad
    raise StorageError(f"gs://{loc.bucket}/{todo[0][0].name}: downloaded bytes do not match the stored "
                       f"size/CRC32C after {INTEGRITY_ROUNDS} attempts")


def upload_files(pairs: list[tuple[Path, str]], dst: Loc) -> None:
    """Upload (local file, object name) pairs in parallel, then check each against the listing."""
    from google.cloud.storage import transfer_manager as tm

    if not pairs:
        return
    bucket = gcs_client().bucket(dst.bucket)
    crcs = {name: crc32c_file(path) for path, name in pairs}
    todo = pairs
    with _progress(f"upload {dst.uri}", len(pairs), sum(p.stat().st_size for p, _ in pairs)) as bar:
        for round_ in range(INTEGRITY_ROUNDS):
            failed: dict[str, Exception] = {}
            for batch in _batches(todo, WORKERS * 8):
                results = tm.upload_many([(str(p), bucket.blob(name)) for p, name in batch],
                                         upload_kwargs={"retry": retry()},
                                         worker_type=tm.THREAD, max_workers=WORKERS, raise_exception=False)
                failed.update((name, r) for (_, name), r in zip(batch, results, strict=True)
                              if isinstance(r, Exception))
                if bar is not None:
                    bar.update(len(batch))
            for name, exc in failed.items():
                if not restartable(exc, dst.bucket):
                    raise storage_error(Loc(dst.bucket, name), exc, "write")
            # Uploads that failed only because their answer got lost are found complete here.
            bad = unverified(dst, {name: (path.stat().st_size, crcs[name]) for path, name in todo})
            if not bad:
                return
            log.warning("%d object(s) under %s missing or not matching after upload; uploading again "
                        "(round %d)", len(bad), dst.uri, round_ + 2)
            todo = [(p, n) for p, n in todo if n in bad]
    raise StorageError(f"gs://{dst.bucket}/{todo[0][1]}: stored object does not match the uploaded file "
                       f"after {INTEGRITY_ROUNDS} attempts")


def rewrite_blobs(pairs: list[tuple[Any, str]], dst: Loc) -> None:
    """Server-side copies (source blob, destination name), checked against the sources' CRC32C."""
    if not pairs:
        return
    bucket = gcs_client().bucket(dst.bucket)

    def one(src: Any, name: str) -> None:
        target, token = bucket.blob(name), None
        with storage_errors(Loc(dst.bucket, name), "write"):
            while True:
                token, _, _ = target.rewrite(src, token=token, retry=retry())
                if token is None:
                    return

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        for f in [ex.submit(one, src, name) for src, name in pairs]:
            f.result()
    bad = unverified(dst, {name: (int(src.size or 0), src.crc32c) for src, name in pairs})
    if bad:
        raise StorageError(f"gs://{dst.bucket}/{sorted(bad)[0]}: copy does not match its source")


def delete_blobs(bucket: str, names: list[str]) -> None:
    from google.api_core.exceptions import NotFound

    b = gcs_client().bucket(bucket)

    def one(name: str) -> None:
        # a retried delete whose first answer got lost finds nothing: that is success
        with storage_errors(Loc(bucket, name), "delete"), contextlib.suppress(NotFound):
            b.blob(name).delete(retry=retry())

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        for f in [ex.submit(one, n) for n in names]:
            f.result()


def _fill_local(src: Loc, dest: Path) -> int:
    """Copy everything below `src` into the (new, empty) directory `dest`."""
    if src.gcs:
        blobs = list_gcs(src)
        pairs = []
        for rel, blob in blobs.items():
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise StorageError(f"gs://{src.bucket}/{blob.name}: object name escapes the target directory")
            pairs.append((blob, target))
        download_blobs(pairs, src)
        return len(pairs)
    files = list_local(src.path)
    with storage_errors(src, "copy"):
        for rel, path in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    return len(files)


def mirror_local(src: Loc, dst: Path, *, mark: bool) -> int:
    """Make `dst` a copy of `src` in one rename: a half copy is never seen under `dst`."""
    if not src.gcs and not src.path.is_dir():
        raise StorageError(f"{src.uri}: not a directory")
    with storage_errors(Loc(None, str(dst)), "write"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        n = _fill_local(src, tmp)
        if n == 0:
            raise StorageError(f"{src.uri}: nothing there to copy")
        if mark:
            (tmp / MARKER).write_text("")
        replace_dir(tmp, dst)
        return n
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mirror_gcs(src: Loc, dst: Loc, *, mark: bool, last: tuple[str, ...] = ()) -> int:
    """Make `dst` a copy of `src`: drop its markers, copy content, drop stale objects, markers last.

    `last`: relative paths written after the rest of the content (before the markers), for readers
    that take one file as the sign of a whole directory (TF Serving: saved_model.pb)."""
    if src.gcs:
        sources: dict[str, Any] = list_gcs(src)
    elif src.path.is_dir():
        sources = list_local(src.path)
    else:
        raise StorageError(f"{src.uri}: not a directory")
    if not sources:
        raise StorageError(f"{src.uri}: nothing there to copy")
    existing = list_gcs(dst)
    old_markers = markers_last(list(existing))[1]
    delete_blobs(dst.bucket, [dst.prefix + r for r in reversed(old_markers)])  # readers now ignore dst
    content, markers = markers_last(list(sources))
    _put(src, sources, [r for r in content if r not in last], dst)
    stale = [dst.prefix + r for r in existing if r not in sources and not is_marker(r)]
    delete_blobs(dst.bucket, stale)
    _put(src, sources, [r for r in content if r in last], dst)
    _put(src, sources, markers, dst)
    if mark and MARKER not in sources:
        write_object(dst.join(MARKER), b"")
    return len(content)


def _put(src: Loc, sources: dict[str, Any], rels: list[str], dst: Loc) -> None:
    if src.gcs:
        rewrite_blobs([(sources[r], dst.prefix + r) for r in rels], dst)
    else:
        upload_files([(sources[r], dst.prefix + r) for r in rels], dst)
