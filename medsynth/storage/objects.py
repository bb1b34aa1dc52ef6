"""Single objects in a bucket: list, get, write (create-only if asked) and check what was stored."""

from __future__ import annotations

import mimetypes
import os
from typing import Any

from medsynth.errors import StorageError
from medsynth.storage.checksums import INTEGRITY_ROUNDS, blob_matches, crc32c_bytes, is_corruption
from medsynth.storage.client import gcs_client, retry, status_code
from medsynth.storage.errors import bucket_exists, storage_errors
from medsynth.storage.uris import Loc


def list_gcs(loc: Loc) -> dict[str, Any]:
    """Objects strictly below `loc` (its prefix + '/'), by name relative to it."""
    with storage_errors(loc, "list"):
        blobs = gcs_client().list_blobs(loc.bucket, prefix=loc.prefix, retry=retry())
        return {b.name[len(loc.prefix):]: b for b in blobs
                if not b.name.endswith("/") and b.name != loc.prefix}


def get_blob(loc: Loc) -> Any | None:
    with storage_errors(loc, "read"):
        return gcs_client().bucket(loc.bucket).get_blob(loc.key, retry=retry()) if loc.key else None


def fresh(blob: Any) -> Any:
    """The same object, addressed through the current endpoint: a listed blob carries a `mediaLink`
    that the emulator builds from whatever host the object was uploaded through."""
    return gcs_client().bucket(blob.bucket.name).blob(blob.name)


def restartable(exc: BaseException, bucket: str) -> bool:
    """An upload failure that a fresh upload fixes: the checksum disagreed, or the resumable session is
    gone (404/410; e.g. it had already finished when a retry re-sent the last chunk)."""
    if is_corruption(exc):
        return True
    return status_code(exc) in (404, 410) and bucket_exists(bucket) is not False


def unverified(dst: Loc, expected: dict[str, tuple[int, str]]) -> set[str]:
    """Object names whose stored size/CRC32C differ from what was sent (or that are missing)."""
    names = sorted(expected)
    if not names:
        return set()
    with storage_errors(dst, "list"):
        if len(names) <= 4:
            bucket = gcs_client().bucket(dst.bucket)
            stored = {n: b for n in names if (b := bucket.get_blob(n, retry=retry())) is not None}
        else:
            common = os.path.commonprefix(names)
            common = common[: common.rfind("/") + 1]
            stored = {b.name: b for b in gcs_client().list_blobs(dst.bucket, prefix=common, retry=retry())}
    return {n for n in names if n not in stored or not blob_matches(stored[n], *expected[n])}


def write_object(loc: Loc, data: bytes, *, if_absent: bool = False) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket = gcs_client().bucket(loc.bucket)
    blob = bucket.blob(loc.key)
    ctype = mimetypes.guess_type(loc.key)[0] or "application/octet-stream"
    crc = crc32c_bytes(data)
    with storage_errors(loc, "write"):
        for attempt in range(INTEGRITY_ROUNDS):
            try:
                blob.upload_from_string(data, content_type=ctype, retry=retry(),
                                        if_generation_match=0 if if_absent else None)
                return
            except PreconditionFailed:
                # GCS refused because the object exists; that is fine only if it is our own earlier,
                # retried attempt whose answer got lost.
                blob.reload(retry=retry())
                if not blob_matches(blob, len(data), crc):
                    raise StorageError(f"{loc.uri}: already exists") from None
                return
            except Exception as e:
                if attempt == INTEGRITY_ROUNDS - 1 or not restartable(e, loc.bucket):
                    raise
                stored = bucket.get_blob(loc.key, retry=retry())
                if stored is not None and blob_matches(stored, len(data), crc):
                    return
