"""One place for paths: local disk and `gs://` behave the same way.

TensorFlow's own `gs://` filesystem cannot talk to the GCS emulator, so TF
always reads and writes local disk and this package moves bytes between local
disk and object storage (`fetch` before TF reads, `publish_dir`/`sync_up`
after it writes). Every write is atomic: a temp name then a rename on disk; on
object storage a single object is atomic, and a directory is complete once its
`_COMPLETE` marker exists, which is always written last. Readers that need a
whole directory check `is_complete` and ignore prefixes without the marker.

Transient failures (429, 5xx, connection resets and timeouts) are retried with
exponential backoff and full jitter on every call, transfer-manager workers
included; every transferred file is checked against the size and CRC32C that
object storage reports. Anything else becomes a one-line `StorageError` that
names the URI.

Callers import from here; the modules, bottom up:
`uris` (locations, the marker), `local` (atomic writes on disk), `client` (the
GCS client and its retries; `client.RETRY_SETTINGS` is the backoff),
`errors` (failures as one line), `checksums`, `objects` (single objects),
`transfer` (many files, mirrors), `files` and `directories` (the public API),
`checkpoints` (training's sync).
"""

from medsynth.storage.checkpoints import sync_down, sync_up
from medsynth.storage.client import RetrySettings
from medsynth.storage.directories import (
    copy_tree,
    delete_prefix,
    download_dir,
    fetch,
    is_complete,
    list_uris,
    publish_dir,
    upload_dir,
)
from medsynth.storage.files import (
    exists,
    read_bytes,
    read_json,
    read_text,
    write_bytes,
    write_json,
    write_text,
)
from medsynth.storage.local import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    jsonable,
)
from medsynth.storage.uris import MARKER, is_gcs, join, parent

__all__ = [
    "MARKER",
    "RetrySettings",
    "atomic_directory",
    "atomic_write_bytes",
    "jsonable",
    "atomic_write_json",
    "atomic_write_text",
    "copy_tree",
    "delete_prefix",
    "download_dir",
    "exists",
    "fetch",
    "is_complete",
    "is_gcs",
    "join",
    "list_uris",
    "parent",
    "publish_dir",
    "read_bytes",
    "read_json",
    "read_text",
    "sync_down",
    "sync_up",
    "upload_dir",
    "write_bytes",
    "write_json",
    "write_text",
]
