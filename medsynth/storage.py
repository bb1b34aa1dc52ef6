"""One place for paths: local disk and `gs://` behave the same way.

TensorFlow's own `gs://` filesystem cannot talk to the GCS emulator, so TF
always reads and writes local disk and this module moves bytes between local
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
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import hashlib
import http.client
import json
import logging
import mimetypes
import os
import re
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import StorageError

MARKER = "_COMPLETE"
Uri = str | os.PathLike

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for transient errors; the deadline bounds each call, not a whole transfer."""

    initial_s: float = 1.0
    maximum_s: float = 32.0
    multiplier: float = 2.0
    deadline_s: float = 300.0


RETRY_SETTINGS = RetrySettings()
# Transfer-manager threads (not processes: many small files, and no client pickling). Whole files per
# request: the XML multipart upload of `upload_chunks_concurrently` answers 501 on the emulator.
WORKERS = 8
_INTEGRITY_ROUNDS = 5  # a file whose size/CRC32C does not match is transferred again, this many times in all
_PROGRESS_FILES, _PROGRESS_BYTES = 500, 256 << 20  # show a progress bar above either
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


# ------------------------------------------------------------------------------------------- locations


def is_gcs(uri: Uri) -> bool:
    return os.fspath(uri).startswith("gs://")


def join(root: Uri, *parts: str) -> str:
    """`root/part/...` for a local path or a gs:// URI (`Path` would turn gs://b into gs:/b)."""
    base = os.fspath(root)
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(str(p).strip("/") for p in parts)])
    return str(Path(base, *parts))


def parent(uri: Uri) -> str:
    """The directory/prefix holding `uri`, local or gs:// alike."""
    s = os.fspath(uri)
    if not is_gcs(s):
        return str(Path(s).parent)
    loc = _parse(s)
    if not loc.key:
        raise StorageError(f"{s}: a bucket has no parent; give an object below it")
    return _Loc(loc.bucket, loc.key.rpartition("/")[0]).uri


@dataclass(frozen=True)
class _Loc:
    """A parsed URI: `bucket` is None for a local path, `key` is the object name or the local path."""

    bucket: str | None
    key: str

    @property
    def gcs(self) -> bool:
        return self.bucket is not None

    @property
    def uri(self) -> str:
        if self.bucket is None:
            return self.key
        return f"gs://{self.bucket}/{self.key}" if self.key else f"gs://{self.bucket}"

    @property
    def path(self) -> Path:
        return Path(self.key)

    @property
    def prefix(self) -> str:
        """Object-name prefix of everything below this location."""
        return f"{self.key}/" if self.key else ""

    def join(self, rel: str) -> _Loc:
        if self.bucket is None:
            return _Loc(None, str(Path(self.key) / rel))
        return _Loc(self.bucket, self.prefix + rel)


def _parse(uri: Uri) -> _Loc:
    s = os.fspath(uri)
    if not isinstance(s, str) or not s:
        raise StorageError(f"{s!r}: empty or non-text storage location: give a local path or gs://<bucket>/<path>")
    if s.startswith("gs://"):
        bucket, _, key = s[5:].partition("/")
        if not bucket:
            raise StorageError(f"{s}: malformed object-storage URI, no bucket: write gs://<bucket>/<path>")
        if not _BUCKET_RE.match(bucket) or ".." in bucket:
            raise StorageError(f"{s}: {bucket!r} is not a valid bucket name "
                               "(3-222 characters: lowercase letters, digits, '-', '_', '.')")
        key = key.strip("/")
        parts = key.split("/") if key else []
        if any(p in ("", ".", "..") for p in parts) or len(key.encode()) > 1024 or "\n" in key or "\r" in key:
            raise StorageError(f"{s}: malformed object name (empty, '.' or '..' segments, a newline, "
                               "or over 1024 bytes)")
        return _Loc(bucket, key)
    if s.startswith("file://"):
        s = urllib.parse.unquote(s[len("file://"):]) or "/"
    elif _SCHEME_RE.match(s):
        raise StorageError(f"{s}: unsupported storage scheme {s.split('://')[0]!r}: use a local path or gs://")
    return _Loc(None, s)


def _is_marker(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name == MARKER or name.endswith("." + MARKER)


def _is_temp(name: str) -> bool:
    """Names our own atomic writes use while in flight; listings never show them."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


# --------------------------------------------------------------------------------- local atomic writes


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, _json_text(obj))


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _atomic_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move a finished temp directory to `path`, replacing what was there only at the very end."""
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and rename it into place when the block succeeds.

    An existing directory at `path` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text("")
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- client, retries, errors


_CLIENTS: dict[tuple[str | None, str | None], Any] = {}
_CLIENT_LOCK = threading.Lock()


def _client() -> Any:
    """One client per endpoint and project, shared by all threads.

    With STORAGE_EMULATOR_HOST set, google-cloud-storage 3.x uses anonymous credentials; otherwise
    application default credentials (workload identity in the cluster). No key ever passes through here.
    """
    host = os.environ.get("STORAGE_EMULATOR_HOST") or None
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or ("medsynth-emulator" if host else None)
    with _CLIENT_LOCK:
        client = _CLIENTS.get((host, project))
        if client is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage as gcs

            try:
                client = gcs.Client(project=project) if project else gcs.Client()
            except DefaultCredentialsError:
                raise StorageError(
                    "no Google Cloud credentials found: in the cluster use workload identity; locally run "
                    "`gcloud auth application-default login`, or set STORAGE_EMULATOR_HOST for an emulator"
                ) from None
            _ = client._http  # create the shared session now, not racily inside worker threads
            _CLIENTS[(host, project)] = client
        return client


def _endpoint() -> str:
    """The endpoint for messages, without any user:password part."""
    host = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    parts = urllib.parse.urlsplit(host if "://" in host else f"http://{host}")
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, server errors, dropped or timed-out connections."""
    import requests
    import urllib3
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.cloud.storage.exceptions import InvalidResponse

    if isinstance(exc, api.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in _TRANSIENT_STATUS
    if isinstance(exc, auth.TransportError):  # network trouble while fetching a token
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, http.client.HTTPException,
                            requests.ConnectionError, requests.Timeout,
                            requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,
                            urllib3.exceptions.PoolError))


def _log_retry(exc: BaseException) -> None:
    log.debug("transient storage error, retrying: %s", type(exc).__name__)


def _retry() -> Any:
    from google.api_core.retry import Retry

    s = RETRY_SETTINGS
    return Retry(predicate=_transient, initial=s.initial_s, maximum=s.maximum_s, multiplier=s.multiplier,
                 timeout=s.deadline_s, on_error=_log_retry)


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """`HTTP 503` for an answer, the exception type for a network failure."""
    code = _status(exc)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def _bucket_exists(bucket: str) -> bool | None:
    try:
        return bool(_client().bucket(bucket).exists(retry=_retry()))
    except Exception:
        return None


def _error(loc: _Loc, exc: BaseException, action: str) -> StorageError:
    """Turn a library exception into one line that names the URI and, where there is one, the fix."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, StorageError):
        return exc
    uri = loc.uri
    if isinstance(exc, api.RetryError) or _transient(exc):
        cause = getattr(exc, "cause", None) or exc
        return StorageError(
            f"{uri}: cannot {action}: object storage at {_endpoint()} failed ({_describe(cause)}) after "
            f"retrying for up to {RETRY_SETTINGS.deadline_s:g}s; check the endpoint, the network and "
            "STORAGE_EMULATOR_HOST")
    if isinstance(exc, api.NotFound) and loc.gcs:
        if _bucket_exists(loc.bucket) is False:
            return StorageError(f"{uri}: bucket '{loc.bucket}' does not exist: create it or fix the URI")
        return StorageError(f"{uri}: not found")
    if isinstance(exc, (api.Forbidden, api.Unauthorized)):
        role = "roles/storage.objectViewer" if action.startswith(("read", "list", "download")) else \
            "roles/storage.objectAdmin"
        return StorageError(
            f"{uri}: permission denied to {action} (HTTP {exc.code}): the account in use (workload identity "
            f"or application default credentials) needs {role} on bucket '{loc.bucket}'")
    if isinstance(exc, auth.RefreshError):
        return StorageError(f"{uri}: cannot {action}: the Google Cloud credentials were rejected; "
                            "re-authenticate (workload identity, or `gcloud auth application-default login`)")
    if isinstance(exc, auth.DefaultCredentialsError):
        return StorageError(f"{uri}: cannot {action}: no Google Cloud credentials found; use workload "
                            "identity or application default credentials, or set STORAGE_EMULATOR_HOST")
    if isinstance(exc, api.GoogleAPICallError):
        return StorageError(f"{uri}: cannot {action}: HTTP {exc.code} {_one_line(exc.message)}")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{uri}: not found")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != uri else ""
        return StorageError(f"{uri}: cannot {action}: {exc.strerror or type(exc).__name__}{where}")
    return StorageError(f"{uri}: cannot {action}: {type(exc).__name__}: {_one_line(str(exc))}")


@contextlib.contextmanager
def _errors(loc: _Loc, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        raise _error(loc, e, action) from e


# --------------------------------------------------------------------------------- listings, checksums


def _crc32c_file(path: Path) -> str:
    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            c.update(chunk)
    return base64.b64encode(c.digest()).decode()


def _crc32c_bytes(data: bytes) -> str:
    import google_crc32c

    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode()


def _list_local(root: Path) -> dict[str, Path]:
    if root.is_file():
        return {root.name: root}
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_temp(d))
        for name in filenames:
            if not _is_temp(name):
                p = Path(dirpath) / name
                out[p.relative_to(root).as_posix()] = p
    return out


def _list_gcs(loc: _Loc) -> dict[str, Any]:
    """Objects strictly below `loc` (its prefix + '/'), by name relative to it."""
    with _errors(loc, "list"):
        blobs = _client().list_blobs(loc.bucket, prefix=loc.prefix, retry=_retry())
        return {b.name[len(loc.prefix):]: b for b in blobs
                if not b.name.endswith("/") and b.name != loc.prefix}


def _get_blob(loc: _Loc) -> Any | None:
    with _errors(loc, "read"):
        return _client().bucket(loc.bucket).get_blob(loc.key, retry=_retry()) if loc.key else None


def _blob_matches(blob: Any, size: int, crc: str) -> bool:
    return int(blob.size or 0) == size and (blob.crc32c is None or blob.crc32c == crc)


def _progress(desc: str, files: int, nbytes: int) -> Any:
    if files < _PROGRESS_FILES and nbytes < _PROGRESS_BYTES:
        return contextlib.nullcontext(None)
    from medsynth.progress import Progress

    return Progress(files, desc, unit="file")


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ------------------------------------------------------------------------------------------- transfers


def _fresh(blob: Any) -> Any:
    """The same object, addressed through the current endpoint: a listed blob carries a `mediaLink`
    that the emulator builds from whatever host the object was uploaded through."""
    return _client().bucket(blob.bucket.name).blob(blob.name)


def _download_blobs(pairs: list[tuple[Any, Path]], loc: _Loc) -> None:
    """Download (listed blob, local path) pairs in parallel, each checked against its size and CRC32C."""
    from google.cloud.storage import transfer_manager as tm

    for _, path in pairs:
        path.parent.mkdir(parents=True, exist_ok=True)
    todo = pairs
    total = sum(int(b.size or 0) for b, _ in pairs)
    with _progress(f"download {loc.uri}", len(pairs), total) as bar:
        for round_ in range(_INTEGRITY_ROUNDS):
            bad: list[tuple[Any, Path]] = []
            for batch in _batches(todo, WORKERS * 8):
                results = tm.download_many([(_fresh(b), str(p)) for b, p in batch],
                                           download_kwargs={"retry": _retry(), "raw_download": True},
                                           worker_type=tm.THREAD, max_workers=WORKERS, raise_exception=False)
                for (blob, path), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        if not _is_corruption(result):
                            raise _error(_Loc(loc.bucket, blob.name), result, "download")
                        bad.append((blob, path))
                    elif not _blob_matches(blob, path.stat().st_size, _crc32c_file(path)):
                        bad.append((blob, path))
                    elif bar is not None:
                        bar.update()
            if not bad:
                return
            log.warning("%d file(s) from %s did not match their checksum; downloading again (round %d)",
                        len(bad), loc.uri, round_ + 2)
            todo = bad
    raise StorageError(f"gs://{loc.bucket}/{todo[0][0].name}: downloaded bytes do not match the stored "
                       f"size/CRC32C after {_INTEGRITY_ROUNDS} attempts")


def _is_corruption(exc: BaseException) -> bool:
    from google.cloud.storage.exceptions import DataCorruption

    return isinstance(exc, DataCorruption)


def _upload_files(pairs: list[tuple[Path, str]], dst: _Loc) -> None:
    """Upload (local file, object name) pairs in parallel, then check each against the listing."""
    from google.cloud.storage import transfer_manager as tm

    if not pairs:
        return
    bucket = _client().bucket(dst.bucket)
    crcs = {name: _crc32c_file(path) for path, name in pairs}
    todo = pairs
    with _progress(f"upload {dst.uri}", len(pairs), sum(p.stat().st_size for p, _ in pairs)) as bar:
        for round_ in range(_INTEGRITY_ROUNDS):
            failed: dict[str, Exception] = {}
            for batch in _batches(todo, WORKERS * 8):
                results = tm.upload_many([(str(p), bucket.blob(name)) for p, name in batch],
                                         upload_kwargs={"retry": _retry()},
                                         worker_type=tm.THREAD, max_workers=WORKERS, raise_exception=False)
                failed.update((name, r) for (_, name), r in zip(batch, results, strict=True)
                              if isinstance(r, Exception))
                if bar is not None:
                    bar.update(len(batch))
            for name, exc in failed.items():
                if not _restartable(exc, dst.bucket):
                    raise _error(_Loc(dst.bucket, name), exc, "write")
            # Uploads that failed only because their answer got lost are found complete here.
            bad = _unverified(dst, {name: (path.stat().st_size, crcs[name]) for path, name in todo})
            if not bad:
                return
            log.warning("%d object(s) under %s missing or not matching after upload; uploading again "
                        "(round %d)", len(bad), dst.uri, round_ + 2)
            todo = [(p, n) for p, n in todo if n in bad]
    raise StorageError(f"gs://{dst.bucket}/{todo[0][1]}: stored object does not match the uploaded file "
                       f"after {_INTEGRITY_ROUNDS} attempts")


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def _restartable(exc: BaseException, bucket: str) -> bool:
    """An upload failure that a fresh upload fixes: the checksum disagreed, or the resumable session is
    gone (404/410; e.g. it had already finished when a retry re-sent the last chunk)."""
    if _is_corruption(exc):
        return True
    return _status(exc) in (404, 410) and _bucket_exists(bucket) is not False


def _unverified(dst: _Loc, expected: dict[str, tuple[int, str]]) -> set[str]:
    """Object names whose stored size/CRC32C differ from what was sent (or that are missing)."""
    names = sorted(expected)
    if not names:
        return set()
    with _errors(dst, "list"):
        if len(names) <= 4:
            bucket = _client().bucket(dst.bucket)
            stored = {n: b for n in names if (b := bucket.get_blob(n, retry=_retry())) is not None}
        else:
            common = os.path.commonprefix(names)
            common = common[: common.rfind("/") + 1]
            stored = {b.name: b for b in _client().list_blobs(dst.bucket, prefix=common, retry=_retry())}
    return {n for n in names if n not in stored or not _blob_matches(stored[n], *expected[n])}


def _rewrite_blobs(pairs: list[tuple[Any, str]], dst: _Loc) -> None:
    """Server-side copies (source blob, destination name), checked against the sources' CRC32C."""
    if not pairs:
        return
    bucket = _client().bucket(dst.bucket)

    def one(src: Any, name: str) -> None:
        target, token = bucket.blob(name), None
        with _errors(_Loc(dst.bucket, name), "write"):
            while True:
                token, _, _ = target.rewrite(src, token=token, retry=_retry())
                if token is None:
                    return

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        for f in [ex.submit(one, src, name) for src, name in pairs]:
            f.result()
    bad = _unverified(dst, {name: (int(src.size or 0), src.crc32c) for src, name in pairs})
    if bad:
        raise StorageError(f"gs://{dst.bucket}/{sorted(bad)[0]}: copy does not match its source")


def _delete_blobs(bucket: str, names: list[str]) -> None:
    from google.api_core.exceptions import NotFound

    b = _client().bucket(bucket)

    def one(name: str) -> None:
        # a retried delete whose first answer got lost finds nothing: that is success
        with _errors(_Loc(bucket, name), "delete"), contextlib.suppress(NotFound):
            b.blob(name).delete(retry=_retry())

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as ex:
        for f in [ex.submit(one, n) for n in names]:
            f.result()


def _markers_last(rels: list[str]) -> tuple[list[str], list[str]]:
    """Content first; markers after, the deepest first so an outer marker is the very last write."""
    content = sorted(r for r in rels if not _is_marker(r))
    markers = sorted((r for r in rels if _is_marker(r)), key=lambda r: (-r.count("/"), r))
    return content, markers


def _fill_local(src: _Loc, dest: Path) -> int:
    """Copy everything below `src` into the (new, empty) directory `dest`."""
    if src.gcs:
        blobs = _list_gcs(src)
        pairs = []
        for rel, blob in blobs.items():
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise StorageError(f"gs://{src.bucket}/{blob.name}: object name escapes the target directory")
            pairs.append((blob, target))
        _download_blobs(pairs, src)
        return len(pairs)
    files = _list_local(src.path)
    with _errors(src, "copy"):
        for rel, path in files.items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest / rel)
    return len(files)


def _mirror_local(src: _Loc, dst: Path, *, mark: bool) -> int:
    """Make `dst` a copy of `src` in one rename: a half copy is never seen under `dst`."""
    if not src.gcs and not src.path.is_dir():
        raise StorageError(f"{src.uri}: not a directory")
    with _errors(_Loc(None, str(dst)), "write"):
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    try:
        n = _fill_local(src, tmp)
        if n == 0:
            raise StorageError(f"{src.uri}: nothing there to copy")
        if mark:
            (tmp / MARKER).write_text("")
        _replace_dir(tmp, dst)
        return n
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _mirror_gcs(src: _Loc, dst: _Loc, *, mark: bool) -> int:
    """Make `dst` a copy of `src`: drop its markers, copy content, drop stale objects, markers last."""
    if src.gcs:
        sources: dict[str, Any] = _list_gcs(src)
    elif src.path.is_dir():
        sources = _list_local(src.path)
    else:
        raise StorageError(f"{src.uri}: not a directory")
    if not sources:
        raise StorageError(f"{src.uri}: nothing there to copy")
    existing = _list_gcs(dst)
    old_markers = _markers_last(list(existing))[1]
    _delete_blobs(dst.bucket, [dst.prefix + r for r in reversed(old_markers)])  # readers now ignore dst
    content, markers = _markers_last(list(sources))
    _put(src, sources, content, dst)
    stale = [dst.prefix + r for r in existing if r not in sources and not _is_marker(r)]
    _delete_blobs(dst.bucket, stale)
    _put(src, sources, markers, dst)
    if mark and MARKER not in sources:
        _write_object(dst.join(MARKER), b"")
    return len(content)


def _put(src: _Loc, sources: dict[str, Any], rels: list[str], dst: _Loc) -> None:
    if src.gcs:
        _rewrite_blobs([(sources[r], dst.prefix + r) for r in rels], dst)
    else:
        _upload_files([(sources[r], dst.prefix + r) for r in rels], dst)


def _write_object(loc: _Loc, data: bytes, *, if_absent: bool = False) -> None:
    from google.api_core.exceptions import PreconditionFailed

    bucket = _client().bucket(loc.bucket)
    blob = bucket.blob(loc.key)
    ctype = mimetypes.guess_type(loc.key)[0] or "application/octet-stream"
    crc = _crc32c_bytes(data)
    with _errors(loc, "write"):
        for attempt in range(_INTEGRITY_ROUNDS):
            try:
                blob.upload_from_string(data, content_type=ctype, retry=_retry(),
                                        if_generation_match=0 if if_absent else None)
                return
            except PreconditionFailed:
                # GCS refused because the object exists; that is fine only if it is our own earlier,
                # retried attempt whose answer got lost.
                blob.reload(retry=_retry())
                if not _blob_matches(blob, len(data), crc):
                    raise StorageError(f"{loc.uri}: already exists") from None
                return
            except Exception as e:
                if attempt == _INTEGRITY_ROUNDS - 1 or not _restartable(e, loc.bucket):
                    raise
                stored = bucket.get_blob(loc.key, retry=_retry())
                if stored is not None and _blob_matches(stored, len(data), crc):
                    return


# -------------------------------------------------------------------------------------- the public API


def exists(uri: Uri) -> bool:
    """A file/object, or a directory/prefix with anything below it; for a bare bucket, the bucket."""
    loc = _parse(uri)
    if not loc.gcs:
        return loc.path.exists()
    if not loc.key:
        with _errors(loc, "read"):
            return bool(_client().bucket(loc.bucket).exists(retry=_retry()))
    if _get_blob(loc) is not None:
        return True
    with _errors(loc, "list"):
        page = _client().list_blobs(loc.bucket, prefix=loc.prefix, max_results=1, retry=_retry())
        return any(True for _ in page)


def is_complete(path: Uri) -> bool:
    """A directory from `atomic_directory`, `publish_dir` or `copy_tree` is complete once it has a marker."""
    loc = _parse(path)
    if not loc.gcs:
        return (loc.path / MARKER).exists()
    return _get_blob(loc.join(MARKER)) is not None


def list_uris(uri: Uri, suffix: str | None = None) -> list[str]:
    """Every file below `uri` (recursively, sorted), markers and in-flight temp files left out.

    A missing directory or prefix lists as empty; a missing bucket is an error.
    """
    loc = _parse(uri)
    if loc.gcs:
        rels = list(_list_gcs(loc))
        if not rels and loc.key and _get_blob(loc) is not None:
            return [loc.uri] if suffix is None or loc.uri.endswith(suffix) else []
    else:
        if loc.path.is_file():
            return [loc.uri] if suffix is None or loc.uri.endswith(suffix) else []
        rels = list(_list_local(loc.path)) if loc.path.is_dir() else []
    return sorted(loc.join(r).uri for r in rels
                  if not _is_marker(r) and (suffix is None or r.endswith(suffix)))


def read_bytes(uri: Uri) -> bytes:
    loc = _parse(uri)
    if not loc.gcs:
        with _errors(loc, "read"):
            if loc.path.is_dir():
                raise StorageError(f"{loc.uri}: is a directory, not a file")
            return loc.path.read_bytes()
    blob = _get_blob(loc)
    if blob is None:
        from google.api_core.exceptions import NotFound

        raise _error(loc, NotFound("no such object"), "read")
    for _ in range(_INTEGRITY_ROUNDS):
        with _errors(loc, "read"):
            try:
                data = _fresh(blob).download_as_bytes(retry=_retry(), raw_download=True)
            except Exception as e:
                if not _is_corruption(e):
                    raise
                continue
        if _blob_matches(blob, len(data), _crc32c_bytes(data)):
            return data
    raise StorageError(f"{loc.uri}: downloaded bytes do not match the stored size/CRC32C")


def read_text(uri: Uri) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: Uri, data: bytes, *, overwrite: bool = True) -> str:
    """Replace the file/object at `uri` in one step; readers see the old bytes or the new ones.

    `overwrite=False` creates only: on GCS with `if_generation_match=0`, so two writers cannot both win.
    """
    loc = _parse(uri)
    if not loc.gcs:
        with _errors(loc, "write"):
            if overwrite:
                atomic_write_bytes(loc.path, data)
            else:
                _create_local(loc.path, data)
        return loc.uri
    if not loc.key:
        raise StorageError(f"{loc.uri}: give an object name below the bucket")
    # The emulator ignores preconditions; this check gives it (and the common case) a clear answer.
    if not overwrite and _get_blob(loc) is not None:
        raise StorageError(f"{loc.uri}: already exists")
    _write_object(loc, data, if_absent=not overwrite)
    return loc.uri


def _create_local(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if `path` exists: the create is atomic and exclusive
        except FileExistsError:
            raise StorageError(f"{path}: already exists") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(uri: Uri, text: str) -> str:
    return write_bytes(uri, text.encode("utf-8"))


def read_json(path: Uri) -> Any:
    loc = _parse(path)
    try:
        return json.loads(read_bytes(loc.uri))
    except json.JSONDecodeError as e:
        raise StorageError(f"{loc.uri}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except UnicodeDecodeError as e:
        raise StorageError(f"{loc.uri}: not valid JSON (not UTF-8 text)") from e


def write_json(uri: Uri, obj: Any) -> str:
    return write_bytes(uri, _json_text(obj).encode("utf-8"))


def upload_dir(local: str | os.PathLike, uri: Uri) -> int:
    """Add every file of `local` below `uri`, markers last; nothing at `uri` is removed. Returns the count."""
    src, dst = _parse(local), _parse(uri)
    if src.gcs:
        raise StorageError(f"{src.uri}: upload_dir needs a local directory; use copy_tree")
    if not src.path.is_dir():
        raise StorageError(f"{src.uri}: not a directory")
    files = _list_local(src.path)
    content, markers = _markers_last(list(files))
    if dst.gcs:
        _upload_files([(files[r], dst.prefix + r) for r in content], dst)
        _upload_files([(files[r], dst.prefix + r) for r in markers], dst)
    else:
        with _errors(dst, "write"):
            for r in content + markers:
                _atomic_copy(files[r], dst.path / r)
    return len(files)


def download_dir(uri: Uri, local: str | os.PathLike) -> Path:
    """Copy everything below `uri` to `local`, via a temp directory renamed into place at the end."""
    src, dst = _parse(uri), _parse(local)
    if dst.gcs:
        raise StorageError(f"{dst.uri}: download_dir needs a local target; use copy_tree")
    _mirror_local(src, dst.path, mark=False)
    return dst.path


def publish_dir(local_dir: str | os.PathLike, uri: Uri) -> str:
    """The atomic publish: make `uri` hold exactly `local_dir`'s files, then write the marker last.

    Republishing first removes the old marker, so readers never trust a mix of old and new files.
    """
    src, dst = _parse(local_dir), _parse(uri)
    if src.gcs:
        raise StorageError(f"{src.uri}: publish_dir needs a local directory; use copy_tree")
    if dst.gcs:
        if not dst.key:
            raise StorageError(f"{dst.uri}: publish below a path in the bucket, not at its root")
        _mirror_gcs(src, dst, mark=True)
    else:
        _mirror_local(src, dst.path, mark=True)
    return dst.uri


def copy_tree(src_uri: Uri, dst_uri: Uri) -> str:
    """Make `dst_uri` a copy of `src_uri` (local or gs:// on either side); complete iff the source is."""
    src, dst = _parse(src_uri), _parse(dst_uri)
    if _overlap(src, dst):
        raise StorageError(f"{src.uri} -> {dst.uri}: source and destination overlap; copy elsewhere")
    if dst.gcs:
        if not dst.key:
            raise StorageError(f"{dst.uri}: copy below a path in the bucket, not to its root")
        _mirror_gcs(src, dst, mark=False)
    else:
        _mirror_local(src, dst.path, mark=False)
    return dst.uri


def _overlap(a: _Loc, b: _Loc) -> bool:
    if a.gcs != b.gcs:
        return False
    if a.gcs:
        return a.bucket == b.bucket and (a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix))
    pa, pb = a.path.resolve(), b.path.resolve()
    return pa.is_relative_to(pb) or pb.is_relative_to(pa)


def delete_prefix(uri: Uri) -> int:
    """Delete a file/object or everything below a directory/prefix, the marker first. Returns the count."""
    loc = _parse(uri)
    if not loc.gcs:
        p = loc.path
        if p.resolve() == Path(p.resolve().anchor):
            raise StorageError(f"{loc.uri}: refusing to delete a filesystem root")
        with _errors(loc, "delete"):
            if p.is_dir() and not p.is_symlink():
                n = len(_list_local(p))
                with contextlib.suppress(FileNotFoundError):
                    (p / MARKER).unlink()
                shutil.rmtree(p)
                return n
            if p.exists() or p.is_symlink():
                p.unlink()
                return 1
            return 0
    if not loc.key:
        raise StorageError(f"{loc.uri}: refusing to delete a whole bucket; name a prefix")
    names = [loc.prefix + r for r in _list_gcs(loc)]
    if _get_blob(loc) is not None:
        names.append(loc.key)
    content, markers = _markers_last(names)
    _delete_blobs(loc.bucket, [m for m in reversed(markers)])  # outer marker first: readers stop trusting it
    _delete_blobs(loc.bucket, content)
    return len(names)


def fetch(uri: Uri, cache_dir: str | os.PathLike, *, require_complete: bool = False) -> Path:
    """A local path TF can read: the path itself when local, else a copy in `cache_dir` keyed by the URI.

    A cached file, or a cached directory that came with its marker, is reused without asking object
    storage again (data sets and model versions never change under the same URI); anything else is
    downloaded again. `require_complete` refuses a directory without its marker.
    """
    loc = _parse(uri)
    if not loc.gcs:
        if not loc.path.exists():
            raise StorageError(f"{loc.uri}: not found")
        if require_complete and loc.path.is_dir() and not is_complete(loc.uri):
            raise StorageError(f"{loc.uri}: incomplete (no {MARKER} marker): it is still being written or "
                               "its writer failed")
        return loc.path
    key = hashlib.sha256(loc.uri.encode()).hexdigest()[:16]
    target = Path(cache_dir) / key / (loc.key.rsplit("/", 1)[-1] or loc.bucket)
    if target.is_file() or (target / MARKER).is_file():
        return target
    blob = _get_blob(loc)
    if blob is not None:
        with _errors(_Loc(None, str(target)), "write"):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
        try:
            _download_blobs([(blob, Path(tmp))], loc)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target
    if require_complete and not is_complete(loc.uri):
        if not exists(loc.uri):
            raise StorageError(f"{loc.uri}: not found")
        raise StorageError(f"{loc.uri}: incomplete (no {MARKER} marker): it is still being written or its "
                           "writer failed")
    if not _list_gcs(loc):
        raise StorageError(f"{loc.uri}: not found")
    _mirror_local(loc, target, mark=False)
    return target


# ----------------------------------------------------------------------------------------- checkpoints


def _checkpoint_of(rel: str) -> str:
    """Which checkpoint a file belongs to: its top-level directory, else its name up to the first dot."""
    head, sep, _ = rel.partition("/")
    return head if sep else rel.split(".", 1)[0]


def _checkpoint_marker(group: str, is_dir: bool) -> str:
    return f"{group}/{MARKER}" if is_dir else f"{group}.{MARKER}"


def sync_up(local_dir: str | os.PathLike, uri: Uri) -> list[str]:
    """Upload new or changed checkpoint files, then one marker per checkpoint; returns the checkpoints sent.

    A checkpoint is a top-level directory, or the files sharing a name up to the first dot
    (`ckpt-5.index` + `ckpt-5.data-00000-of-00001`; TF's `checkpoint` state file is its own).
    Checkpoints go oldest first (by file time), so the state file, written last by TF, arrives
    after the checkpoints it names. Remote files are never deleted.
    """
    src, dst = _parse(local_dir), _parse(uri)
    if src.gcs or not src.path.is_dir():
        raise StorageError(f"{src.uri}: sync_up needs a local checkpoint directory")
    local = {r: p for r, p in _list_local(src.path).items() if not _is_marker(r)}
    if dst.gcs:
        remote = {r: (int(b.size or 0), b.crc32c) for r, b in _list_gcs(dst).items()}
    else:
        remote = {r: (p.stat().st_size, _crc32c_file(p)) for r, p in _list_local(dst.path).items()}
    groups: dict[str, list[str]] = {}
    for rel in local:
        groups.setdefault(_checkpoint_of(rel), []).append(rel)
    order = sorted(groups, key=lambda g: (max(local[r].stat().st_mtime_ns for r in groups[g]), g))
    sent = []
    for g in order:
        is_dir = "/" in groups[g][0]
        marker = _checkpoint_marker(g, is_dir)
        changed = [r for r in sorted(groups[g])
                   if remote.get(r) != (local[r].stat().st_size, _crc32c_file(local[r]))]
        if not changed and marker in remote:
            continue
        if changed and marker in remote and len(groups[g]) > 1:
            _delete(dst.join(marker))  # a multi-file checkpoint being rewritten is not complete meanwhile
        if dst.gcs:
            _upload_files([(local[r], dst.prefix + r) for r in changed], dst)
            _write_object(dst.join(marker), b"")
        else:
            with _errors(dst, "write"):
                for r in changed:
                    _atomic_copy(local[r], dst.path / r)
                atomic_write_bytes(dst.path / marker, b"")
        sent.append(g)
    return sent


def sync_down(uri: Uri, local_dir: str | os.PathLike) -> list[str]:
    """Bring the complete (marked) checkpoints at `uri` into `local_dir` and return them; skip the rest."""
    src, dst = _parse(uri), _parse(local_dir)
    if dst.gcs:
        raise StorageError(f"{dst.uri}: sync_down needs a local directory")
    if src.gcs:
        entries: dict[str, Any] = _list_gcs(src)
    else:
        entries = _list_local(src.path) if src.path.is_dir() else {}
    names = set(entries)
    groups: dict[str, list[str]] = {}
    for rel in names:
        if not _is_marker(rel):
            groups.setdefault(_checkpoint_of(rel), []).append(rel)
    complete = sorted(g for g, rels in groups.items() if _checkpoint_marker(g, "/" in rels[0]) in names)
    have = _list_local(dst.path) if dst.path.is_dir() else {}
    todo = []
    for g in complete:
        for rel in [*groups[g], _checkpoint_marker(g, "/" in groups[g][0])]:
            mine = have.get(rel)
            if src.gcs:
                if mine is None or not _blob_matches(entries[rel], mine.stat().st_size, _crc32c_file(mine)):
                    todo.append(rel)
            elif mine is None or mine.read_bytes() != entries[rel].read_bytes():
                todo.append(rel)
    todo.sort(key=lambda r: (_is_marker(r), r))
    with _errors(dst, "write"):
        dst.path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.path.name}.", suffix=".tmp", dir=dst.path))
    try:
        if src.gcs:
            _download_blobs([(entries[r], tmp / r) for r in todo], src)
        else:
            for r in todo:
                (tmp / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entries[r], tmp / r)
        with _errors(dst, "write"):
            for r in todo:  # each file replaced in one step; markers after their checkpoint's files
                (dst.path / r).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / r, dst.path / r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return complete


def _delete(loc: _Loc) -> None:
    if loc.gcs:
        _delete_blobs(loc.bucket, [loc.key])
    else:
        with contextlib.suppress(FileNotFoundError):
            loc.path.unlink()
