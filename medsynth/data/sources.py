"""Where frames come from: a local folder (recursive), a `.zip`, a `gs://bucket/prefix`, `builtin://phantom`.

A source lists its inputs as `Entry`s, sorted by relative path, and hands out a picklable `Reader`
that worker processes use to get an entry's bytes. Relative paths stay inside this process and the
workers: they may contain patient names, so messages name an input only by its index in the sorted
listing (and quarantine.json by a salted hash, see `deid.Hasher.name`).

Archives are read member by member in memory, never extracted, and checked before anything is read:
entries with absolute paths or `..` are refused, so are members whose compression ratio or size is
beyond the limits, and an archive whose declared total is beyond the limit is refused as a whole.

Label files: a `.json` beside the frames that holds COCO Keypoints (CVAT, Label Studio, our own
`annotations.json`) is read here, in this process, and handed to `prepare` as a `LabelFile`; other
JSON (the phantom's per-frame meta files, tool exports) is a side-car file, skipped and counted. The
decision is by content (`coco.looks_like_coco`), never by name. Label file names are PHI like any
other path: only salted hashes of them reach outputs.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medsynth.data.coco import looks_like_coco
from medsynth.errors import DataError

BUILTINS = ("phantom",)
# Files that sit beside frames in exports and phantom folders: skipped and counted, not quarantined.
SIDECAR_SUFFIXES = frozenset(
    {".json", ".txt", ".md", ".csv", ".xml", ".yaml", ".yml", ".log", ".html", ".htm", ".ini", ".cfg"}
)
SKIP_NAMES = frozenset({"_COMPLETE", "Thumbs.db", ".DS_Store", "DICOMDIR"})  # DICOMDIR: a media index


@dataclass(frozen=True)
class Limits:
    """What one input may cost; each limit protects the machine against a hostile or broken file."""

    max_file_bytes: int = 1 << 30  # bytes of one input file as stored
    max_decoded_bytes: int = 1 << 30  # declared rows x cols x frames x samples x bytes, before decoding
    zip_max_ratio: float = 200.0  # uncompressed / compressed, per member over 1 MiB
    zip_max_total_bytes: int = 64 << 30  # declared uncompressed total of an archive
    zip_max_entries: int = 1_000_000


@dataclass(frozen=True, slots=True)
class Entry:
    index: int  # position in the sorted listing: the only way messages refer to an input
    rel: str  # relative path or member name; may hold PHI, never logged or written
    size: int
    problem: str | None = None  # set when the listing already shows the entry is unsafe


@dataclass(frozen=True, slots=True)
class LabelFile:
    """A COCO key-point file of the source, read whole (label files are small)."""

    rel: str  # relative path or member name; may hold PHI, never logged or written
    data: bytes


@dataclass
class Listing:
    scheme: str  # "file", "zip", "gs", "builtin"
    entries: list[Entry]
    skipped: int = 0
    reader: Reader | None = None
    builtin: str | None = None
    cleanup: list[Path] = field(default_factory=list)
    labels: list[LabelFile] = field(default_factory=list)  # sorted by relative path

    def describe(self) -> dict:
        """A PHI-free description for the manifest: the kind of source and counts, never paths."""
        return {
            "scheme": self.scheme,
            "inputs": len(self.entries),
            "skipped_sidecar_files": self.skipped,
            "label_files": len(self.labels),
            **({"builtin": self.builtin} if self.builtin else {}),
        }

    def close(self) -> None:
        if isinstance(self.reader, ZipReader):  # opened here when decoding ran in this process
            zf = _ZIPS.pop(self.reader.path, None)
            if zf is not None:
                zf.close()
        for p in self.cleanup:
            shutil.rmtree(p, ignore_errors=True)


class Reader:
    """Reads an entry's bytes inside a worker process."""

    def read(self, entry: Entry) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class TooLarge(Exception):
    """An input is larger than `Limits.max_file_bytes`."""


@dataclass
class FolderReader(Reader):
    root: str
    max_bytes: int

    def read(self, entry: Entry) -> bytes:
        with open(os.path.join(self.root, entry.rel), "rb") as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise TooLarge
        return data


_ZIPS: dict[str, zipfile.ZipFile] = {}  # one open archive per worker process


@dataclass
class ZipReader(Reader):
    path: str
    max_bytes: int

    def read(self, entry: Entry) -> bytes:
        zf = _ZIPS.get(self.path)
        if zf is None:
            zf = _ZIPS[self.path] = zipfile.ZipFile(self.path)
        info = zf.getinfo(entry.rel)
        # Read one byte past the limit: a member whose header lies about its size is caught here too.
        with zf.open(info) as f:
            data = f.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise TooLarge
        return data


def open_source(uri: str, limits: Limits, cache_dir: str | Path | None = None) -> Listing:
    """List a source's inputs. Missing paths and unknown builtins are a `DataError` naming them."""
    uri = str(uri)
    if uri.startswith("builtin://"):
        name = uri[len("builtin://") :].strip("/")
        if name not in BUILTINS:
            raise DataError(
                f"unknown built-in data set {uri!r}; valid: {', '.join('builtin://' + b for b in BUILTINS)}"
            )
        return Listing(scheme="builtin", entries=[], builtin=name)
    if uri.startswith("gs://"):
        return _gcs(uri, limits, cache_dir)
    if "://" in uri:
        raise DataError(
            f"unsupported source {uri!r}: give a folder, a .zip, gs://bucket/prefix or builtin://phantom"
        )
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(
            f"source {uri} does not exist: give a folder, a .zip, gs://bucket/prefix or builtin://phantom"
        )
    if path.is_dir():
        return _folder(path, limits, "file")
    if zipfile.is_zipfile(path):
        return _zip(path, limits)
    raise DataError(f"source {uri} is a file but not a .zip archive: give a folder or a .zip")


def _skippable(rel: str) -> bool:
    return _hidden(rel) or PurePosixPath(rel).suffix.lower() in SIDECAR_SUFFIXES


def _hidden(rel: str) -> bool:
    """System files, hidden files and macOS archive metadata: never inputs, never labels."""
    parts = PurePosixPath(rel).parts
    return (
        posixpath.basename(rel) in SKIP_NAMES
        or any(p.startswith(".") for p in parts)
        or rel.startswith("__MACOSX/")
    )


def _maybe_labels(rel: str) -> bool:
    """A side-car file that may be a COCO label file (then its content decides)."""
    return PurePosixPath(rel).suffix.lower() == ".json" and not _hidden(rel)


def _label_file(rel: str, read: Callable[[], bytes | None]) -> LabelFile | None:
    """`rel` as a label file when its content is COCO key points, else None (a side-car file)."""
    data = read()
    return LabelFile(rel, data) if data is not None and looks_like_coco(data) else None


def _folder(root: Path, limits: Limits, scheme: str) -> Listing:
    rels: list[tuple[str, int]] = []
    labels: list[LabelFile] = []
    skipped = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        if "manifest.json" in filenames and "shards" in dirnames:
            # Its preview.png would otherwise become a training frame and its shards "unsupported files".
            raise DataError(
                f"source {root} holds a prepared data set in {os.path.relpath(dirpath, root)}; "
                "give that directory itself as the data set, not as a source to prepare"
            )
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if _maybe_labels(rel) and os.path.isfile(full) and not os.path.islink(full):
                label = _label_file(rel, lambda full=full: _read_small(full, limits.max_file_bytes))
                if label is not None:
                    labels.append(label)
                    continue
            if _skippable(rel):
                skipped += 1
                continue
            if os.path.islink(full) or not os.path.isfile(full):
                rels.append((rel, -1))
                continue
            rels.append((rel, os.path.getsize(full)))
    rels.sort()
    entries = []
    for i, (rel, size) in enumerate(rels):
        problem = None
        if size < 0:
            problem = "symbolic link or special file (not followed)"
        elif size > limits.max_file_bytes:
            problem = (
                f"file of {size / 2**20:.0f} MiB is over the limit of {limits.max_file_bytes / 2**20:.0f} MiB"
            )
        entries.append(Entry(i, rel, max(size, 0), problem))
    labels.sort(key=lambda lf: lf.rel)
    return Listing(scheme, entries, skipped, FolderReader(str(root), limits.max_file_bytes), labels=labels)


def _read_small(path: str, max_bytes: int) -> bytes | None:
    """A file's bytes, or None when it is over `max_bytes` (then it is not read as labels)."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


def unsafe_member_name(name: str) -> bool:
    """Absolute paths, drive letters and `..` segments: what a path-traversal archive would use."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":"):
        return True
    return any(part == ".." for part in n.split("/"))


def _zip(path: Path, limits: Limits) -> Listing:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"source {path} is not a readable zip archive ({type(e).__name__})") from None
    labels: list[LabelFile] = []
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        candidates = {
            i.filename: i
            for i in infos
            if _maybe_labels(i.filename)
            and not unsafe_member_name(i.filename)
            and not i.flag_bits & 0x1
            and i.file_size <= limits.max_file_bytes
            and (i.file_size <= (1 << 20) or i.file_size <= limits.zip_max_ratio * max(1, i.compress_size))
        }
        for name, info in sorted(candidates.items()):
            label = _label_file(name, lambda info=info: _read_member(zf, info))
            if label is not None:
                labels.append(label)
    label_names = {lf.rel for lf in labels}
    if len(infos) > limits.zip_max_entries:
        raise DataError(f"source {path} has {len(infos)} entries, over the limit of {limits.zip_max_entries}")
    total = sum(i.file_size for i in infos)
    if total > limits.zip_max_total_bytes:
        raise DataError(
            f"source {path} declares {total / 2**30:.1f} GiB uncompressed, over the limit of "
            f"{limits.zip_max_total_bytes / 2**30:.1f} GiB (a zip bomb?); nothing was extracted"
        )
    seen: set[str] = set()
    rows: list[tuple[str, int, str | None]] = []
    skipped = 0
    for info in infos:
        name = info.filename
        problem = None
        if unsafe_member_name(name):
            problem = "archive entry with an absolute path or '..' (path traversal); not read"
        elif name in seen:
            problem = "duplicate archive entry name; not read"
        elif info.flag_bits & 0x1:
            problem = "encrypted archive entry"
        elif info.file_size > limits.max_file_bytes:
            problem = (
                f"archive entry of {info.file_size / 2**20:.0f} MiB is over the limit of "
                f"{limits.max_file_bytes / 2**20:.0f} MiB"
            )
        elif info.file_size > (1 << 20) and info.file_size > limits.zip_max_ratio * max(
            1, info.compress_size
        ):
            ratio = info.file_size / max(1, info.compress_size)
            problem = (
                f"compression ratio {ratio:.0f}:1 is over the limit of "
                f"{limits.zip_max_ratio:.0f}:1 (zip bomb?)"
            )
        elif name in label_names:
            continue
        elif _skippable(name):
            skipped += 1
            continue
        seen.add(name)
        rows.append((name, info.file_size, problem))
    rows.sort(key=lambda r: r[0])
    entries = [Entry(i, name, size, problem) for i, (name, size, problem) in enumerate(rows)]
    return Listing("zip", entries, skipped, ZipReader(str(path), limits.max_file_bytes), labels=labels)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes | None:
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, RuntimeError, ValueError):  # corrupt or unsupported member
        return None
    return data if len(data) <= info.file_size else None


def _gcs(uri: str, limits: Limits, cache_dir: str | Path | None) -> Listing:
    """Objects under a prefix (or one .zip object) are downloaded into a temporary folder, then read like
    a local folder (or archive): memory stays flat, disk holds one copy while prepare runs."""
    from medsynth import storage
    from medsynth.errors import StorageError

    tmp = Path(tempfile.mkdtemp(prefix="medsynth-gcs-", dir=cache_dir))
    try:
        try:
            local = Path(storage.fetch(uri.rstrip("/"), tmp))
        except StorageError as e:
            raise DataError(f"source {uri} cannot be read: {e}") from None
        if local.is_dir():
            listing = _folder(local, limits, "gs")
        elif zipfile.is_zipfile(local):
            listing = _zip(local, limits)
            listing.scheme = "gs"
        else:
            raise DataError(f"source {uri} is one object but not a .zip archive: give a prefix or a .zip")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    listing.cleanup.append(tmp)
    return listing
