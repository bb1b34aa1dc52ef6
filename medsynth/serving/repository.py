"""The model repository as TF Serving sees it: `<base>/<version>/` SavedModels, polled, newest served.

Policy (TF Serving's "latest" version policy with its availability-preserving loader):

- every poll lists the integer version directories under the base path (local, or `gs://` where only
  versions with their completion marker count, because an upload is not atomic);
- the newest version is loaded (and its `assets.extra/tf_serving_warmup_requests` replayed) while the
  current one keeps serving; only when it is AVAILABLE is the old one unloaded (state END);
- a version that fails to load is reported in the model status with its error and the served version
  stays; it is tried again only when its directory changes. When the newest version is broken at
  start-up, the newest one that loads is served instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.serving.protocol import DEFAULT_SIGNATURE, RequestError, invalid, not_found

log = logging.getLogger("medsynth.serve")

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MODEL_CARD = "assets.extra/model_card.json"


@dataclass
class VersionState:
    version: int
    state: str  # START | LOADING | AVAILABLE | UNLOADING | END (TF Serving's ModelVersionStatus.State)
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: Any = None


class LoadedModel:
    """One loaded version: its signature functions, their SignatureDefs, and a checked `predict`."""

    def __init__(self, name: str, version: int, path: str | os.PathLike) -> None:
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        self.name, self.version, self.path = name, int(version), Path(path)
        self._tf = tf
        self.module = tf.saved_model.load(str(self.path))
        self.functions = dict(self.module.signatures)
        if not self.functions:
            raise ValueError(f"SavedModel {self.path} has no serving signatures")
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((self.path / "saved_model.pb").read_bytes())
        graphs = [g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags] or list(saved.meta_graphs)
        self.signature_defs = graphs[0].signature_def  # what TF Serving returns as metadata
        self.inputs = {k: f.structured_input_signature[1] for k, f in self.functions.items()}
        self.outputs = {k: f.structured_outputs for k, f in self.functions.items()}
        try:
            self.card: dict[str, Any] = json.loads((self.path / MODEL_CARD).read_text())
        except (OSError, ValueError):
            self.card = {}

    def input_specs(self, signature: str) -> Mapping[str, Any]:
        return self.inputs[self._signature(signature)]

    def _signature(self, signature: str) -> str:
        signature = signature or DEFAULT_SIGNATURE
        if signature not in self.functions:
            raise invalid(f'Serving signature name: "{signature}" not found in signature def '
                          f"(this model has: {', '.join(sorted(self.functions))})")
        return signature

    def predict(
        self,
        signature: str,
        inputs: Mapping[str, np.ndarray],
        *,
        output_filter: list[str] | None = None,
        max_batch: int | None = None,
    ) -> tuple[dict[str, np.ndarray], int]:
        """Run one signature on validated inputs; returns (outputs by name, batch size)."""
        tf = self._tf
        signature = self._signature(signature)
        specs = self.inputs[signature]
        sent, needed = set(inputs), set(specs)
        if sent != needed:
            raise invalid(
                f"input size does not match signature: {len(sent)}!={len(needed)} "
                f"len({{{', '.join(sorted(sent))}}}) != len({{{', '.join(sorted(needed))}}}). "
                f"Sent extra: {sorted(sent - needed)}. Missing but required: {sorted(needed - sent)}."
            )
        batch = None
        feed = {}
        for name, spec in specs.items():
            a = inputs[name]
            want = np.dtype(spec.dtype.as_numpy_dtype) if spec.dtype != tf.string else np.dtype(object)
            if want.kind == "O":
                if a.dtype.kind not in "OSU":
                    raise invalid(f"input '{name}' must be strings, got {a.dtype.name}")
            elif a.dtype != want:
                raise invalid(
                    f"Expects arg '{name}' to be {spec.dtype.name} but {_tf_name(a.dtype)} is provided"
                )
            shape = spec.shape
            if shape.rank is not None:
                if a.ndim != shape.rank:
                    raise invalid(
                        f"input '{name}' has shape {list(a.shape)} but the signature takes "
                        f"{_shape_str(shape)} (rank {shape.rank})"
                    )
                for got, dim in zip(a.shape, shape.as_list(), strict=True):
                    if dim is not None and got != dim:
                        raise invalid(f"input '{name}' has shape {list(a.shape)} but the signature takes "
                                      f"{_shape_str(shape)}")
            if a.ndim:
                if batch is not None and a.shape[0] != batch:
                    raise invalid(f"inputs disagree on the batch size: {a.shape[0]} vs {batch}")
                batch = a.shape[0]
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise invalid(f"input '{name}' contains NaN or infinity; send finite numbers")
            feed[name] = tf.constant(a, dtype=spec.dtype)
        n = int(batch or 0)
        if batch is not None and n < 1:
            raise invalid("the request asks for 0 images; send at least one instance")
        if max_batch is not None and n > max_batch:
            raise invalid(
                f"the request asks for {n} images; this server generates at most {max_batch} per request "
                "(--max-images-per-request): split it into smaller requests"
            )
        names = list(self.outputs[signature])
        if output_filter:
            unknown = sorted(set(output_filter) - set(names))
            if unknown:
                raise invalid(f"output tensor alias not found in signature: {', '.join(unknown)}")
            names = [x for x in names if x in set(output_filter)]
        try:
            out = self.functions[signature](**feed)
        except tf.errors.InvalidArgumentError as e:
            raise invalid(_graph_error(e.message) or str(e)) from None
        except tf.errors.OpError as e:
            raise RequestError(_code_of(e), e.message or str(e)) from None
        return {k: out[k].numpy() for k in names}, n

    def warmup(self) -> int:
        """Replay the SavedModel's warm-up requests, as TF Serving does on load; returns how many ran."""
        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        tf = self._tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            log_entry = prediction_log_pb2.PredictionLog()
            log_entry.ParseFromString(record)
            if log_entry.WhichOneof("log_type") != "predict_log":
                continue
            req = log_entry.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
            self.predict(req.model_spec.signature_name, inputs)
            count += 1
            if count >= 1000:  # TF Serving's limit
                break
        return count


def _graph_error(message: str) -> str:
    """The line of a graph's error that says what was wrong (an assertion's text), not which node."""
    lines = [x for x in (message or "").splitlines() if x.strip() and not x.strip().startswith("[[{{node")]
    return lines[-1].strip() if lines else ""


def _tf_name(dtype: np.dtype) -> str:
    return {"O": "string", "S": "string", "U": "string"}.get(dtype.kind, dtype.name)


def _shape_str(shape: Any) -> str:
    return "[" + ", ".join("n" if d is None else str(d) for d in shape.as_list()) + "]"


def _code_of(e: Exception) -> str:
    name = type(e).__name__.replace("Error", "")
    return _TF_ERROR_CODES.get(name, "UNKNOWN")


_TF_ERROR_CODES = {
    "InvalidArgument": "INVALID_ARGUMENT", "NotFound": "NOT_FOUND", "ResourceExhausted": "RESOURCE_EXHAUSTED",
    "FailedPrecondition": "FAILED_PRECONDITION", "Unimplemented": "UNIMPLEMENTED", "Internal": "INTERNAL",
    "Unavailable": "UNAVAILABLE", "DeadlineExceeded": "DEADLINE_EXCEEDED", "DataLoss": "DATA_LOSS",
    "PermissionDenied": "PERMISSION_DENIED", "OutOfRange": "OUT_OF_RANGE", "Aborted": "ABORTED",
    "AlreadyExists": "ALREADY_EXISTS", "Cancelled": "CANCELLED", "Unauthenticated": "UNAUTHENTICATED",
}


class ModelRepository:
    """Watches `<base_path>/<version>/` and keeps the newest loadable version served."""

    def __init__(
        self,
        base_path: str,
        model_name: str,
        *,
        poll_wait_seconds: float = 2.0,
        cache_dir: str | None = None,
        on_change: Any = None,
    ) -> None:
        from medsynth.storage import is_gcs

        self.base_path = str(base_path)
        self.model_name = model_name
        self.poll_wait_seconds = float(poll_wait_seconds)
        self.gcs = is_gcs(self.base_path)
        self._cache_dir = cache_dir
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._states: dict[int, VersionState] = {}
        self._served: dict[int, LoadedModel] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_change = on_change

    # --- queries (any thread) -------------------------------------------------------------------------
    def get(self, version: int | None = None) -> LoadedModel:
        with self._lock:
            served = dict(self._served)
        if version is None:
            if not served:
                raise not_found(f"Servable not found for request: Latest({self.model_name})")
            return served[max(served)]
        if version not in served:
            raise not_found(f"Servable not found for request: Specific({self.model_name}, {version})")
        return served[version]

    def status(self, version: int | None = None) -> list[VersionState]:
        with self._lock:
            states = sorted(self._states.values(), key=lambda s: -s.version)
        if version is not None:
            states = [s for s in states if s.version == version]
            if not states:
                raise not_found(f"Could not find version {version} of model {self.model_name}")
        elif not states:
            raise not_found(f"Could not find any versions of model {self.model_name}")
        return [VersionState(s.version, s.state, s.error_code, s.error_message) for s in states]

    def served_version(self) -> int | None:
        with self._lock:
            return max(self._served) if self._served else None

    # --- polling ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll once now (so a good model is served when this returns), then in a thread."""
        self.poll()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._loop, name="medsynth-model-poll", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self._tmp is not None:
            self._tmp.cleanup()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a failed poll must not end the watcher; the next one retries
                log.exception("polling %s failed", self.base_path)

    def poll(self) -> None:
        """One pass of TF Serving's file-system source: discover versions, load the newest, unload old."""
        with self._poll_lock:
            found = self._list_versions()
            with self._lock:
                served = set(self._served)
            for v in sorted(found, reverse=True):
                if v in served:
                    break  # the newest version that is not served yet is older than the served one
                st = self._states.get(v)
                if st and st.state == "END" and st.error_code != "OK" and st.fingerprint == found[v]:
                    continue  # failed before and unchanged since: do not retry on every poll
                if self._load(v, found[v]):
                    break
            with self._lock:
                remaining = [v for v in self._served if v in found]  # a deleted version is unloaded
                newest = max(remaining) if remaining else None
                unload = [v for v in self._served if v != newest]
                for v in unload:
                    self._served.pop(v)
                    self._states[v] = VersionState(v, "END")
                    log.info("unloaded %s version %d", self.model_name, v)
            if unload and self._on_change:
                self._on_change()

    def _load(self, version: int, fingerprint: Any) -> bool:
        with self._lock:
            self._states[version] = VersionState(version, "LOADING", fingerprint=fingerprint)
        t0 = time.monotonic()
        try:
            path = self._materialize(version)
            model = LoadedModel(self.model_name, version, path)
            warm = model.warmup()
        except Exception as e:  # noqa: BLE001 - any failure to load is reported in the status, not raised
            code = e.code if isinstance(e, RequestError) else _code_of(e)
            message = getattr(e, "message", None) or str(e) or type(e).__name__
            message = " ".join(str(message).split())[:500]
            with self._lock:
                self._states[version] = VersionState(version, "END", code, message, fingerprint)
            log.error("version %d of %s failed to load: %s", version, self.model_name, message)
            return False
        with self._lock:
            self._served[version] = model
            self._states[version] = VersionState(version, "AVAILABLE", fingerprint=fingerprint)
        log.info("serving %s version %d (loaded in %.1f s, %d warm-up requests)",
                 self.model_name, version, time.monotonic() - t0, warm)
        if self._on_change:
            self._on_change()
        return True

    def _list_versions(self) -> dict[int, Any]:
        """Integer version directories and a fingerprint of each (what changed since the last try)."""
        if self.gcs:
            from medsynth import storage

            base = self.base_path.rstrip("/")
            names: dict[int, list[str]] = {}
            for uri in storage.list_uris(base):
                head = uri[len(base) + 1 :].split("/", 1)[0]
                if head.isdigit():  # 0 too, as TF Serving (medsynth's placeholder is 0)
                    names.setdefault(int(head), []).append(uri)
            return {v: tuple(sorted(u)) for v, u in names.items() if storage.is_complete(f"{base}/{v}")}
        base_dir = Path(self.base_path)
        if not base_dir.is_dir():
            return {}
        out = {}
        for child in base_dir.iterdir():
            if child.name.isdigit() and child.is_dir():
                out[int(child.name)] = _local_fingerprint(child)
        return out

    def _materialize(self, version: int) -> Path:
        if not self.gcs:
            return Path(self.base_path) / str(version)
        from medsynth import storage

        if self._cache_dir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="medsynth-serve-")
            self._cache_dir = self._tmp.name
        uri = f"{self.base_path.rstrip('/')}/{version}"
        return storage.fetch(uri, self._cache_dir, require_complete=True)


def _local_fingerprint(path: Path) -> tuple:
    items = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            p = Path(root) / f
            try:
                st = p.stat()
            except OSError:
                continue
            items.append((str(p.relative_to(path)), st.st_size, st.st_mtime_ns))
    return tuple(sorted(items))
