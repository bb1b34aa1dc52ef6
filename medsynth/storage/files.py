"""One file or object: does it exist, read it, replace it in one step (or create it only if absent)."""

from __future__ import annotations

import json
from typing import Any

from medsynth.errors import StorageError
from medsynth.storage.checksums import INTEGRITY_ROUNDS, blob_matches, crc32c_bytes, is_corruption
from medsynth.storage.client import gcs_client, retry
from medsynth.storage.errors import storage_error, storage_errors
from medsynth.storage.local import atomic_write_bytes, create_local, json_text
from medsynth.storage.objects import fresh, get_blob, write_object
from medsynth.storage.uris import Uri, parse


def exists(uri: Uri) -> bool:
    """A file/object, or a directory/prefix with anything below it; for a bare bucket, the bucket."""
    loc = parse(uri)
    if not loc.gcs:
        return loc.path.exists()
    if not loc.key:
        with storage_errors(loc, "read"):
            return bool(gcs_client().bucket(loc.bucket).exists(retry=retry()))
    if get_blob(loc) is not None:
        return True
    with storage_errors(loc, "list"):
        page = gcs_client().list_blobs(loc.bucket, prefix=loc.prefix, max_results=1, retry=retry())
        return any(True for _ in page)


def read_bytes(uri: Uri) -> bytes:
    loc = parse(uri)
    if not loc.gcs:
        with storage_errors(loc, "read"):
            if loc.path.is_dir():
                raise StorageError(f"{loc.uri}: is a directory, not a file")
            return loc.path.read_bytes()
    blob = get_blob(loc)
    if blob is None:
        from google.api_core.exceptions import NotFound

        raise storage_error(loc, NotFound("no such object"), "read")
    for _ in range(INTEGRITY_ROUNDS):
        with storage_errors(loc, "read"):
            try:
                data = fresh(blob).download_as_bytes(retry=retry(), raw_download=True)
            except Exception as e:
                if not is_corruption(e):
                    raise
                continue
        if blob_matches(blob, len(data), crc32c_bytes(data)):
            return data
    raise StorageError(f"{loc.uri}: downloaded bytes do not match the stored size/CRC32C")


def read_text(uri: Uri) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: Uri, data: bytes, *, overwrite: bool = True) -> str:
    """Replace the file/object at `uri` in one step; readers see the old bytes or the new ones.

    `overwrite=False` creates only: on GCS with `if_generation_match=0`, so two writers cannot both win.
    """
    loc = parse(uri)
    if not loc.gcs:
        with storage_errors(loc, "write"):
            if overwrite:
                atomic_write_bytes(loc.path, data)
            else:
                create_local(loc.path, data)
        return loc.uri
    if not loc.key:
        raise StorageError(f"{loc.uri}: give an object name below the bucket")
    # The emulator ignores preconditions; this check gives it (and the common case) a clear answer.
    if not overwrite and get_blob(loc) is not None:
        raise StorageError(f"{loc.uri}: already exists")
    write_object(loc, data, if_absent=not overwrite)
    return loc.uri


def write_text(uri: Uri, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def read_json(path: Uri) -> Any:
    loc = parse(path)
    try:
        return json.loads(read_bytes(loc.uri))
    except json.JSONDecodeError as e:
        raise StorageError(f"{loc.uri}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise StorageError(f"{loc.uri}: not valid JSON (not UTF-8 text)") from e


def write_json(uri: Uri, obj: Any) -> str:
    return write_bytes(uri, json_text(obj).encode("utf-8"))
