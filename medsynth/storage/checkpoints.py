"""Checkpoint sync for training: upload new checkpoints as they appear, bring back only complete ones."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medsynth.errors import StorageError
from medsynth.storage.checksums import blob_matches, crc32c_file
from medsynth.storage.errors import storage_errors
from medsynth.storage.local import atomic_copy, atomic_write_bytes, list_local
from medsynth.storage.objects import list_gcs, write_object
from medsynth.storage.transfer import delete_blobs, download_blobs, upload_files
from medsynth.storage.uris import MARKER, Loc, Uri, is_marker, parse


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
    src, dst = parse(local_dir), parse(uri)
    if src.gcs or not src.path.is_dir():
        raise StorageError(f"{src.uri}: sync_up needs a local checkpoint directory")
    local = {r: p for r, p in list_local(src.path).items() if not is_marker(r)}
    if dst.gcs:
        remote = {r: (int(b.size or 0), b.crc32c) for r, b in list_gcs(dst).items()}
    else:
        remote = {r: (p.stat().st_size, crc32c_file(p)) for r, p in list_local(dst.path).items()}
    groups: dict[str, list[str]] = {}
    for rel in local:
        groups.setdefault(_checkpoint_of(rel), []).append(rel)
    order = sorted(groups, key=lambda g: (max(local[r].stat().st_mtime_ns for r in groups[g]), g))
    sent = []
    for g in order:
        is_dir = "/" in groups[g][0]
        marker = _checkpoint_marker(g, is_dir)
        changed = [r for r in sorted(groups[g])
                   if remote.get(r) != (local[r].stat().st_size, crc32c_file(local[r]))]
        if not changed and marker in remote:
            continue
        if changed and marker in remote and len(groups[g]) > 1:
            _delete(dst.join(marker))  # a multi-file checkpoint being rewritten is not complete meanwhile
        if dst.gcs:
            upload_files([(local[r], dst.prefix + r) for r in changed], dst)
            write_object(dst.join(marker), b"")
        else:
            with storage_errors(dst, "write"):
                for r in changed:
                    atomic_copy(local[r], dst.path / r)
                atomic_write_bytes(dst.path / marker, b"")
        sent.append(g)
    return sent


def sync_down(uri: Uri, local_dir: str | os.PathLike) -> list[str]:
    """Bring the complete (marked) checkpoints at `uri` into `local_dir` and return them; skip the rest."""
    src, dst = parse(uri), parse(local_dir)
    if dst.gcs:
        raise StorageError(f"{dst.uri}: sync_down needs a local directory")
    if src.gcs:
        entries: dict[str, Any] = list_gcs(src)
    else:
        entries = list_local(src.path) if src.path.is_dir() else {}
    names = set(entries)
    groups: dict[str, list[str]] = {}
    for rel in names:
        if not is_marker(rel):
            groups.setdefault(_checkpoint_of(rel), []).append(rel)
    complete = sorted(g for g, rels in groups.items() if _checkpoint_marker(g, "/" in rels[0]) in names)
    have = list_local(dst.path) if dst.path.is_dir() else {}
    todo = []
    for g in complete:
        for rel in [*groups[g], _checkpoint_marker(g, "/" in groups[g][0])]:
            mine = have.get(rel)
            if src.gcs:
                if mine is None or not blob_matches(entries[rel], mine.stat().st_size, crc32c_file(mine)):
                    todo.append(rel)
            elif mine is None or mine.read_bytes() != entries[rel].read_bytes():
                todo.append(rel)
    todo.sort(key=lambda r: (is_marker(r), r))
    with storage_errors(dst, "write"):
        dst.path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.path.name}.", suffix=".tmp", dir=dst.path))
    try:
        if src.gcs:
            download_blobs([(entries[r], tmp / r) for r in todo], src)
        else:
            for r in todo:
                (tmp / r).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entries[r], tmp / r)
        with storage_errors(dst, "write"):
            for r in todo:  # each file replaced in one step; markers after their checkpoint's files
                (dst.path / r).parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / r, dst.path / r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return complete


def _delete(loc: Loc) -> None:
    if loc.gcs:
        delete_blobs(loc.bucket, [loc.key])
    else:
        with contextlib.suppress(FileNotFoundError):
            loc.path.unlink()
