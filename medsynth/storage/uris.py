"""Where things are: a local path or a `gs://bucket/key` URI, parsed once, joined alike.

Also the names of the atomic-write protocol: the `_COMPLETE` marker a directory is trusted by, and the
temp names our own writes use while in flight (listings never show them).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from medsynth.errors import StorageError

MARKER = "_COMPLETE"
Uri = str | os.PathLike
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


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
    loc = parse(s)
    if not loc.key:
        raise StorageError(f"{s}: a bucket has no parent; give an object below it")
    return Loc(loc.bucket, loc.key.rpartition("/")[0]).uri


@dataclass(frozen=True)
class Loc:
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

    def join(self, rel: str) -> Loc:
        if self.bucket is None:
            return Loc(None, str(Path(self.key) / rel))
        return Loc(self.bucket, self.prefix + rel)


def parse(uri: Uri) -> Loc:
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
        return Loc(bucket, key)
    if s.startswith("file://"):
        s = urllib.parse.unquote(s[len("file://"):]) or "/"
    elif _SCHEME_RE.match(s):
        raise StorageError(f"{s}: unsupported storage scheme {s.split('://')[0]!r}: use a local path or gs://")
    return Loc(None, s)


def is_marker(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name == MARKER or name.endswith("." + MARKER)


def is_temp(name: str) -> bool:
    """Names our own atomic writes use while in flight; listings never show them."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


def markers_last(rels: list[str]) -> tuple[list[str], list[str]]:
    """Content first; markers after, the deepest first so an outer marker is the very last write."""
    content = sorted(r for r in rels if not is_marker(r))
    markers = sorted((r for r in rels if is_marker(r)), key=lambda r: (-r.count("/"), r))
    return content, markers
