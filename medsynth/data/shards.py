"""TFRecord shards: one `tf.train.Example` per frame, raw pixel bytes plus shape and dtype.

Raw bytes (not PNG) because decoding is then a `tf.io.decode_raw` on a whole batch, which keeps the
input pipeline far ahead of the training step. Shards are cut at `max_bytes` (default 128 MiB: large
enough for sequential reads, small enough for parallel interleave and partial downloads) or at
`max_count` examples, one writer per split, and each carries a SHA-256 in the manifest.

Writing does not import TensorFlow: the `tf.train.Example` message and the TFRecord framing (length,
masked CRC-32C of length and data) are encoded here in a few lines, so `prepare` starts in a fraction
of a second and its memory is the data's, not TensorFlow's. Reading uses TensorFlow's own parser, and
the tests read every written shard back through it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.keypoints import MAX_POINTS, FramePoints

DEFAULT_SHARD_BYTES = 128 * 1024 * 1024

FEATURES = (
    "image", "height", "width", "dtype", "patient", "study", "loop", "frame", "kp_xy", "kp_class", "labelled"
)  # fmt: skip
KEYPOINT_FEATURES = ("kp_xy", "kp_class", "labelled")  # since format 2; older shards read as unlabelled


@dataclass
class Record:
    """One frame as stored: pixels, the de-identified grouping it belongs to, and its key points.

    Key points are stored unpadded (`kp_xy` = x0, y0, x1, y1, ... float32; `kp_class` int64, an index
    into `keypoints.CLASSES`; at most `MAX_POINTS`, the tip first) with `labelled` 0/1, in the
    convention of `medsynth.data.keypoints`; `keypoints=None` is an unlabelled frame.
    """

    image: np.ndarray  # [H, W] uint8 or uint16
    patient: str  # salted hash
    study: str  # salted hash
    loop: int  # index of the cine loop within the data set
    frame: int  # index of the frame within its loop
    keypoints: FramePoints | None = None  # None: unlabelled


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1  # int64 as protobuf encodes it (two's complement for negatives)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _field(1, _field(1, value))  # Feature.bytes_list{value}


def _int64_feature(value: int) -> bytes:
    return _field(3, _field(1, _varint(int(value))))  # Feature.int64_list{packed value}


def _float_list_feature(values: np.ndarray) -> bytes:
    data = np.asarray(values, "<f4").tobytes()
    return _field(2, _field(1, data) if data else b"")  # Feature.float_list{packed value}


def _int64_list_feature(values: np.ndarray) -> bytes:
    data = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, data) if data else b"")  # Feature.int64_list{packed value}


def encode(record: Record) -> bytes:
    """A serialized `tf.train.Example` with the features in `FEATURES`."""
    image = np.ascontiguousarray(record.image)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"shards hold 2-D uint8/uint16 frames, got {image.dtype} {image.shape}")
    # Little-endian on disk whatever the host, so `decode_raw(little_endian=True)` always agrees.
    data = image.astype(image.dtype.newbyteorder("<"), copy=False).tobytes()
    features = {
        "image": _bytes_feature(data),
        "height": _int64_feature(image.shape[0]),
        "width": _int64_feature(image.shape[1]),
        "dtype": _bytes_feature(image.dtype.name.encode()),
        "patient": _bytes_feature(record.patient.encode()),
        "study": _bytes_feature(record.study.encode()),
        "loop": _int64_feature(record.loop),
        "frame": _int64_feature(record.frame),
    }
    kp = record.keypoints
    if kp is not None and len(kp) > MAX_POINTS:
        raise ValueError(f"a frame holds at most {MAX_POINTS} key points, got {len(kp)}")
    features["kp_xy"] = _float_list_feature(kp.points.ravel() if kp is not None else np.zeros(0))
    features["kp_class"] = _int64_list_feature(kp.classes if kp is not None else np.zeros(0))
    features["labelled"] = _int64_feature(int(kp is not None))
    entries = b"".join(_field(1, _field(1, k.encode()) + _field(2, v)) for k, v in features.items())
    return _field(1, entries)  # Example.features{feature map}


def _masked_crc(data: bytes) -> bytes:
    import google_crc32c

    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame_record(data: bytes) -> bytes:
    """TFRecord framing of one serialized example."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc(length) + data + _masked_crc(data)


def decode(serialized: bytes) -> Record:
    """Parse one example in Python (tests, `real_frames`); training uses `input.py`'s batched parse."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature
    dtype = np.dtype(f["dtype"].bytes_list.value[0].decode()).newbyteorder("<")
    h, w = f["height"].int64_list.value[0], f["width"].int64_list.value[0]
    image = np.frombuffer(f["image"].bytes_list.value[0], dtype=dtype).reshape(h, w)
    image = image.astype(dtype.newbyteorder("="))
    keypoints = None
    if "labelled" in f and f["labelled"].int64_list.value[0]:
        keypoints = FramePoints(
            np.asarray(f["kp_xy"].float_list.value, np.float32).reshape(-1, 2),
            np.asarray(f["kp_class"].int64_list.value, np.int32),
        )
    return Record(
        image=image,
        patient=f["patient"].bytes_list.value[0].decode(),
        study=f["study"].bytes_list.value[0].decode(),
        loop=f["loop"].int64_list.value[0],
        frame=f["frame"].int64_list.value[0],
        keypoints=keypoints,
    )


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Writes `<split>-NNNNN.tfrecord` files under `directory`, starting a new one when full."""

    def __init__(
        self,
        directory: str | Path,
        split: str,
        max_bytes: int = DEFAULT_SHARD_BYTES,
        max_count: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.split, self.max_bytes, self.max_count = split, max_bytes, max_count
        self.shards: list[dict] = []
        self._writer = None
        self._count = self._bytes = 0

    def write(self, record: Record) -> None:
        data = frame_record(encode(record))
        over_count = self.max_count is not None and self._count >= self.max_count
        if self._writer is not None and (self._bytes + len(data) > self.max_bytes or over_count):
            self._finish()
        if self._writer is None:
            self._path = self.directory / f"{self.split}-{len(self.shards):05d}.tfrecord"
            self._writer = open(self._path, "wb")  # noqa: SIM115 - closed in _finish
            self._sha = hashlib.sha256()
            self._count = self._bytes = 0
        self._writer.write(data)
        self._sha.update(data)
        self._count += 1
        self._bytes += len(data)

    def _finish(self) -> None:
        self._writer.close()
        self._writer = None
        self.shards.append(
            {
                "file": f"shards/{self._path.name}",
                "split": self.split,
                "examples": self._count,
                "bytes": self._bytes,
                "sha256": self._sha.hexdigest(),
            }
        )

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._finish()
        return self.shards


def read_records(path: str | Path) -> Iterator[Record]:
    """Every record of one shard file, in order."""
    import tensorflow as tf

    for serialized in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        yield decode(serialized)


def verify(dataset_dir: str | Path, manifest: dict) -> list[str]:
    """Shards whose bytes no longer match the manifest's checksums (empty when all are intact)."""
    bad = []
    for shard in manifest["shards"]:
        path = Path(dataset_dir) / shard["file"]
        if not path.exists() or sha256_file(path) != shard["sha256"]:
            bad.append(shard["file"])
    return bad
