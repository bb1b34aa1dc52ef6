"""TF Serving's wire formats, shared by the REST and gRPC front ends of `medsynth serve` and by the client.

Error codes are TF Serving's canonical ones (``tensorflow/core/protobuf/error_codes.proto``) and map to
HTTP as its ``http_server.cc`` does. JSON tensors follow its ``json_tensor.cc``: row format
(``instances`` / ``predictions``), columnar format (``inputs`` / ``outputs``), ``{"b64": …}`` for string
tensors whose name ends in ``_bytes``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from medsynth.errors import ServingError

# TF Serving's ToHTTPStatusCode.
HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
BYTES_SUFFIX = "_bytes"
DEFAULT_SIGNATURE = "serving_default"


class RequestError(ServingError):
    """A request the server refuses, with the canonical status code both protocols report."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code if code in HTTP_STATUS else "UNKNOWN"
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid(message: str) -> RequestError:
    return RequestError("INVALID_ARGUMENT", message)


def not_found(message: str) -> RequestError:
    return RequestError("NOT_FOUND", message)


def error_json(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


# --- JSON request -> numpy ---------------------------------------------------------------------------
def parse_predict_json(body: bytes) -> tuple[str, dict[str, Any], str]:
    """Split a predict body into (signature name, raw JSON inputs by name, "row" | "columnar").

    Which names exist is only known once the signature is, so the values stay JSON here and become arrays
    in `json_inputs_to_arrays`.
    """
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise invalid(f"JSON Parse error: {str(e)[:200]}") from None
    if not isinstance(doc, dict):
        raise invalid("JSON Value: request body is not a JSON object")
    signature = doc.get("signature_name", "")
    if not isinstance(signature, str):
        raise invalid("'signature_name' must be a string")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        return signature or DEFAULT_SIGNATURE, {"instances": doc["instances"]}, "row"
    if has_inputs:
        return signature or DEFAULT_SIGNATURE, {"inputs": doc["inputs"]}, "columnar"
    raise invalid("Missing 'inputs' or 'instances' key")


def json_inputs_to_arrays(raw: dict[str, Any], fmt: str, specs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Turn the `instances` or `inputs` JSON into one array per named input of the signature.

    `specs` maps input names to objects with `.dtype` (a numpy dtype or tf.DType): only the dtype is
    needed to read JSON; shapes are checked later, once, for REST and gRPC alike.
    """
    names = sorted(specs)
    if fmt == "row":
        instances = raw["instances"]
        if not isinstance(instances, list):
            raise invalid("Excepting 'instances' to be an list/array")
        if not instances:
            raise invalid("No values in 'instances' array")
        objects = _is_named_object(instances[0])
        if not objects and len(names) > 1:
            raise invalid("instances is a plain list, but expecting list of objects as multiple input "
                          "tensors required as per tensorinfo_map")
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for i, item in enumerate(instances):
            if objects:
                if not _is_named_object(item):
                    raise invalid(f"Expecting object but got list at item {i} of input list")
                if set(item) != set(names):
                    raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object keys "
                                  f"{sorted(item)} must be equal to: {','.join(names)}")
                for n in names:
                    columns[n].append(item[n])
            else:
                if _is_named_object(item):
                    raise invalid(f"Expecting value/list but got object at item {i} of input list")
                columns[names[0]].append(item)
        arrays = {}
        for n in names:
            items = [_to_array(v, _dtype(specs[n]), f"element of input '{n}'") for v in columns[n]]
            first = items[0].shape
            for i, a in enumerate(items):
                if a.shape != first:
                    raise invalid(f"Failed to process element: {i} of 'instances' list. Expecting shape "
                                  f"{list(first)} but got: {list(a.shape)} for input '{n}'")
            arrays[n] = np.stack(items)
        return arrays
    value = raw["inputs"]
    if not _is_named_object(value):
        if len(names) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                          "required as per tensorinfo_map")
        return {names[0]: _to_array(value, _dtype(specs[names[0]]), f"input '{names[0]}'")}
    for n in names:
        if n not in value:
            raise invalid(f"Missing named input: {n} in 'inputs' object.")
    extra = sorted(set(value) - set(names))
    if extra:
        raise invalid(f"unknown named input(s) {extra} in 'inputs' object; the signature takes {names}")
    return {n: _to_array(value[n], _dtype(specs[n]), f"input '{n}'") for n in names}


def _is_named_object(v: Any) -> bool:
    return isinstance(v, dict) and not _is_b64(v)


def _is_b64(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and "b64" in v


def _dtype(spec: Any) -> np.dtype:
    dt = getattr(spec, "dtype", spec)
    as_np = getattr(dt, "as_numpy_dtype", None)  # tf.DType
    return np.dtype(as_np if as_np is not None else dt)


def _to_array(value: Any, dtype: np.dtype, where: str) -> np.ndarray:
    if dtype.kind in "OSU":  # DT_STRING
        return _strings_to_array(value, where)
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as e:
        raise invalid(f"{where} is not a dense numeric tensor (ragged lists or mixed types): {e}") from None
    kind = arr.dtype.kind
    if kind == "O" or kind in "SUV":
        raise invalid(f"{where} must be a dense, rectangular array of numbers; got ragged lists, strings or "
                      "objects")
    if kind == "b":
        raise invalid(f"{where}: expected {dtype.name} numbers, got true/false")
    if dtype.kind == "f":
        if kind not in "iuf":
            raise invalid(f"{where}: expected {dtype.name} numbers")
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(dtype)
        if np.isfinite(arr).all() and not np.isfinite(out).all():
            raise invalid(f"{where}: a value is out of range for {dtype.name}")
        return out
    if dtype.kind in "iu":
        if kind == "f":
            raise invalid(f"{where}: expected integers ({dtype.name}), got a decimal number")
        info = np.iinfo(dtype)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise invalid(f"{where}: a value is out of range for {dtype.name}")
        return arr.astype(dtype)
    if dtype.kind == "b":
        return arr.astype(bool)
    raise invalid(f"{where}: JSON input of type {dtype.name} is not supported")


def _strings_to_array(value: Any, where: str) -> np.ndarray:
    def convert(v: Any) -> Any:
        if isinstance(v, list):
            return [convert(x) for x in v]
        if _is_b64(v):
            if not isinstance(v["b64"], str):
                raise invalid(f"{where}: 'b64' must hold a base64 string")
            try:
                return base64.b64decode(v["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"{where}: 'b64' is not valid base64") from None
        if isinstance(v, str):
            return v.encode("utf-8")
        raise invalid(f"{where}: expected strings or {{\"b64\": ...}} objects")

    flat = convert(value)
    shape = _dense_shape(flat, where)
    out = np.empty(shape, dtype=object)
    if shape:
        out[...] = _fill(flat, shape)
    else:
        out[()] = flat
    return out


def _dense_shape(v: Any, where: str) -> tuple[int, ...]:
    if not isinstance(v, list):
        return ()
    if not v:
        return (0,)
    inner = [_dense_shape(x, where) for x in v]
    if any(s != inner[0] for s in inner):
        raise invalid(f"{where}: ragged lists; every row needs the same length")
    return (len(v), *inner[0])


def _fill(v: Any, shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=object)
    for idx in np.ndindex(*shape):
        x = v
        for i in idx:
            x = x[i]
        out[idx] = x
    return out


# --- numpy -> JSON response ----------------------------------------------------------------------------
def outputs_to_json(outputs: Mapping[str, np.ndarray], fmt: str) -> bytes:
    """The predict response in the request's format, as TF Serving writes it."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == "row":
        batch = None
        for n in names:
            a = outputs[n]
            if a.ndim == 0:
                raise invalid(f"Tensor name: {n} has no shape information ")
            if batch is not None and a.shape[0] != batch:
                raise invalid(f"Tensor name: {n} has inconsistent batch size: {a.shape[0]} "
                              f"expecting: {batch}")
            batch = a.shape[0]
        items = {n: _items_json(outputs[n], n.endswith(BYTES_SUFFIX)) for n in names}
        if len(names) == 1:
            rows = items[names[0]]
        else:
            keys = {n: json.dumps(n).encode() + b":" for n in names}
            rows = [b"{" + b",".join(keys[n] + items[n][i] for n in names) + b"}" for i in range(batch or 0)]
        return b'{"predictions":[' + b",".join(rows) + b"]}"
    cols = {n: _tensor_json(outputs[n], n.endswith(BYTES_SUFFIX)) for n in names}
    if len(names) == 1:
        return b'{"outputs":' + cols[names[0]] + b"}"
    return b'{"outputs":{' + b",".join(json.dumps(n).encode() + b":" + cols[n] for n in names) + b"}}"


def _tensor_json(a: np.ndarray, as_b64: bool) -> bytes:
    if a.dtype.kind in "iu" and a.ndim >= 1 and a.size:
        return _int_json_text(a, keep_axes=0)[()].tobytes()
    return _dumps(_tensor_to_py(a, as_b64))


def _items_json(a: np.ndarray, as_b64: bool) -> list[bytes]:
    """The JSON text of each a[i] (row format)."""
    if a.dtype.kind in "iu" and a.ndim >= 2 and a.size:
        text = _int_json_text(a, keep_axes=1)
        return [row.tobytes() for row in text]
    return [_dumps(v) for v in _tensor_to_py(a, as_b64)]


def _dumps(v: Any) -> bytes:
    return json.dumps(v, separators=(",", ":"), allow_nan=True).encode()


def _tensor_to_py(a: np.ndarray, as_b64: bool) -> Any:
    if a.dtype.kind in "OSU":
        def enc(x: Any) -> Any:
            if isinstance(x, list):
                return [enc(y) for y in x]
            b = x if isinstance(x, bytes) else str(x).encode()
            return {"b64": base64.b64encode(b).decode("ascii")} if as_b64 else b.decode("utf-8", "replace")

        return enc(a.tolist())
    if a.dtype.kind == "f":
        return a.astype(np.float64).tolist()
    return a.tolist()


_SPACE, _COMMA, _OPEN, _CLOSE, _MINUS, _ZERO = (ord(c) for c in " ,[]-0")


def _int_json_text(a: np.ndarray, keep_axes: int) -> np.ndarray:
    """JSON text of an integer array as bytes, built with array operations instead of per-number Python.

    Every number is written right-aligned in a fixed width (JSON allows the blanks), so each sub-array
    has the same length and the nesting is a few concatenations. Returns a uint8 array whose first
    `keep_axes` axes are those of `a`; its last axis holds the text of each sub-array.
    """
    neg = a < 0 if a.dtype.kind == "i" else np.zeros(a.shape, bool)
    mag = np.abs(a.astype(np.int64)).astype(np.uint64) if a.dtype.kind == "i" else a
    top = int(mag.max())
    mag = mag.astype(next(t for t in (np.uint16, np.uint32, np.uint64) if top <= np.iinfo(t).max))
    ndig = len(str(top))
    v = mag
    width = ndig + (1 if neg.any() else 0)
    text = np.full(v.shape + (width,), _SPACE, np.uint8)
    x = mag.copy()
    for pos in range(width - 1, width - 1 - ndig, -1):
        digit = (x % 10).astype(np.uint8) + _ZERO
        text[..., pos] = np.where((x == 0) & (pos != width - 1), _SPACE, digit)
        x //= 10
    if neg.any():
        digits = np.ones(v.shape, np.int64)
        for k in range(1, ndig):
            digits += mag >= 10**k
        idx = np.nonzero(neg)
        text[(*idx, width - 1 - digits[idx])] = _MINUS
    for axis in range(v.ndim - 1, keep_axes - 1, -1):  # wrap the innermost axis in [..], then the next
        d = text.shape[axis]
        body = np.concatenate([text, np.full(text.shape[:-1] + (1,), _COMMA, np.uint8)], axis=-1)
        body = body.reshape(text.shape[:axis] + (d * body.shape[-1],))[..., :-1]
        edge = text.shape[:axis] + (1,)
        text = np.concatenate([np.full(edge, _OPEN, np.uint8), body, np.full(edge, _CLOSE, np.uint8)],
                              axis=-1)
    return text


def decode_b64_values(values: Any) -> list[bytes]:
    """The bytes of a JSON list of `{"b64": …}` objects (a `_bytes` output in a response)."""
    if not isinstance(values, list):
        raise ServingError(f"expected a list of {{\"b64\": ...}} values, got {type(values).__name__}")
    out = []
    for v in values:
        if not _is_b64(v):
            raise ServingError("expected {\"b64\": ...} values in the response")
        out.append(base64.b64decode(v["b64"]))
    return out


def finite(a: np.ndarray) -> bool:
    return a.dtype.kind != "f" or bool(np.isfinite(a).all())
