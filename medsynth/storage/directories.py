"""Whole directories, local or gs:// alike: list, publish atomically, copy, delete, fetch for TF to read.

A directory from `atomic_directory`, `publish_dir` or `copy_tree` is complete once its `_COMPLETE` marker
exists, which is always written last; readers that need a whole directory check `is_complete`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from medsynth.errors import StorageError
from medsynth.storage.errors import storage_errors
from medsynth.storage.files import exists
from medsynth.storage.local import atomic_copy, list_local
from medsynth.storage.objects import get_blob, list_gcs
from medsynth.storage.transfer import delete_blobs, download_blobs, mirror_gcs, mirror_local, upload_files
from medsynth.storage.uris import MARKER, Loc, Uri, is_marker, markers_last, parse


def is_complete(path: Uri) -> bool:
    """A directory from `atomic_directory`, `publish_dir` or `copy_tree` is complete once it has a marker."""
    loc = parse(path)
    if not loc.gcs:
        return (loc.path / MARKER).exists()
    return get_blob(loc.join(MARKER)) is not None


def list_uris(uri: Uri, suffix: str | None = None) -> list[str]:
    """Every file below `uri` (recursively, sorted), markers and in-flight temp files left out.

    A missing directory or prefix lists as empty; a missing bucket is an error.
    """
    loc = parse(uri)
    if loc.gcs:
        rels = list(list_gcs(loc))
        if not rels and loc.key and get_blob(loc) is not None:
            return [loc.uri] if suffix is None or loc.uri.endswith(suffix) else []
    else:
        if loc.path.is_file():
            return [loc.uri] if suffix is None or loc.uri.endswith(suffix) else []
        rels = list(list_local(loc.path)) if loc.path.is_dir() else []
    return sorted(loc.join(r).uri for r in rels
                  if not is_marker(r) and (suffix is None or r.endswith(suffix)))


def upload_dir(local: str | os.PathLike, uri: Uri) -> int:
    """Add every file of `local` below `uri`, markers last; nothing at `uri` is removed. Returns the count."""
    src, dst = parse(local), parse(uri)
    if src.gcs:
        raise StorageError(f"{src.uri}: upload_dir needs a local directory; use copy_tree")
    if not src.path.is_dir():
        raise StorageError(f"{src.uri}: not a directory")
    files = list_local(src.path)
    content, markers = markers_last(list(files))
    if dst.gcs:
        upload_files([(files[r], dst.prefix + r) for r in content], dst)
        upload_files([(files[r], dst.prefix + r) for r in markers], dst)
    else:
        with storage_errors(dst, "write"):
            for r in content + markers:
                atomic_copy(files[r], dst.path / r)
    return len(files)


def download_dir(uri: Uri, local: str | os.PathLike) -> Path:
    """Copy everything below `uri` to `local`, via a temp directory renamed into place at the end."""
    src, dst = parse(uri), parse(local)
    if dst.gcs:
        raise StorageError(f"{dst.uri}: download_dir needs a local target; use copy_tree")
    mirror_local(src, dst.path, mark=False)
    return dst.path


def publish_dir(local_dir: str | os.PathLike, uri: Uri) -> str:
    """The atomic publish: make `uri` hold exactly `local_dir`'s files, then write the marker last.

    Republishing first removes the old marker, so readers never trust a mix of old and new files.
    """
    src, dst = parse(local_dir), parse(uri)
    if src.gcs:
        raise StorageError(f"{src.uri}: publish_dir needs a local directory; use copy_tree")
    return _mirror(src, dst, mark=True)


def copy_tree(src_uri: Uri, dst_uri: Uri, *, last: tuple[str, ...] = ()) -> str:
    """Make `dst_uri` a copy of `src_uri` (local or gs:// on either side); complete iff the source is.

    `last` (gs:// targets): relative paths copied after every other file (a local copy is one rename)."""
    src, dst = parse(src_uri), parse(dst_uri)
    if _overlap(src, dst):
        raise StorageError(f"{src.uri} -> {dst.uri}: source and destination overlap; copy elsewhere")
    return _mirror(src, dst, mark=False, last=last)


def _mirror(src: Loc, dst: Loc, mark: bool, last: tuple[str, ...] = ()) -> str:
    """Make `dst` hold exactly `src`'s files (`last` after the others, on gs://); `mark`: then write the
    completion marker, last."""
    if dst.gcs:
        if not dst.key:
            raise StorageError(f"{dst.uri}: write below a path in the bucket, not to its root")
        mirror_gcs(src, dst, mark=mark, last=last)
    else:
        mirror_local(src, dst.path, mark=mark)
    return dst.uri


def _overlap(a: Loc, b: Loc) -> bool:
    if a.gcs != b.gcs:
        return False
    if a.gcs:
        return a.bucket == b.bucket and (a.prefix.startswith(b.prefix) or b.prefix.startswith(a.prefix))
    pa, pb = a.path.resolve(), b.path.resolve()
    return pa.is_relative_to(pb) or pb.is_relative_to(pa)


def delete_prefix(uri: Uri) -> int:
    """Delete a file/object or everything below a directory/prefix, the marker first. Returns the count."""
    loc = parse(uri)
    if not loc.gcs:
        p = loc.path
        if p.resolve() == Path(p.resolve().anchor):
            raise StorageError(f"{loc.uri}: refusing to delete a filesystem root")
        with storage_errors(loc, "delete"):
            if p.is_dir() and not p.is_symlink():
                n = len(list_local(p))
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
    names = [loc.prefix + r for r in list_gcs(loc)]
    if get_blob(loc) is not None:
        names.append(loc.key)
    content, markers = markers_last(names)
    delete_blobs(loc.bucket, [m for m in reversed(markers)])  # outer marker first: readers stop trusting it
    delete_blobs(loc.bucket, content)
    return len(names)


def fetch(uri: Uri, cache_dir: str | os.PathLike, *, require_complete: bool = False) -> Path:
    """A local path TF can read: the path itself when local, else a copy in `cache_dir` keyed by the URI.

    A cached file, or a cached directory that came with its marker, is reused without asking object
    storage again (data sets and model versions never change under the same URI); anything else is
    downloaded again. `require_complete` refuses a directory without its marker.
    """
    loc = parse(uri)
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
    blob = get_blob(loc)
    if blob is not None:
        with storage_errors(Loc(None, str(target)), "write"):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
        try:
            download_blobs([(blob, Path(tmp))], loc)
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
    if not list_gcs(loc):
        raise StorageError(f"{loc.uri}: not found")
    mirror_local(loc, target, mark=False)
    return target
