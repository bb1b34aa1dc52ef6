"""CRC32C as object storage reports it (base64), and whether a transferred file matches it."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

INTEGRITY_ROUNDS = 5  # a file whose size/CRC32C does not match is transferred again, this many times in all


def crc32c_file(path: Path) -> str:
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            c.update(chunk)
    return base64.b64encode(c.digest()).decode()


def crc32c_bytes(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def blob_matches(blob: Any, size: int, crc: str) -> bool:
    return int(blob.size or 0) == size and (blob.crc32c is None or blob.crc32c == crc)


def is_corruption(exc: BaseException) -> bool:
    from google.cloud.storage.exceptions import DataCorruption

    return isinstance(exc, DataCorruption)
