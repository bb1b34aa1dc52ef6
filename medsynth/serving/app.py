"""What the REST and gRPC front ends share, independent of either transport.

`ServingApp` resolves model names and versions, enforces the limits, counts requests in flight for a
graceful shutdown and builds TF Serving's status and metadata protos; `rest.py` and `grpc_service.py`
translate their wire formats to it, and `server.py` starts them both over one app.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsynth.errors import ConfigError
from medsynth.serving.protocol import RequestError, invalid, not_found
from medsynth.serving.repository import LoadedModel, ModelRepository

METRICS_PATH = "/monitoring/prometheus/metrics"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ServeConfig:
    """What `medsynth serve` needs; the flags keep TF Serving's names (with dashes or underscores)."""

    model_base_path: str
    model_name: str = "generator"
    rest_port: int | None = 8501  # 0: any free port; None: no REST server
    grpc_port: int | None = 8500  # 0: any free port; None: no gRPC server
    host: str = "0.0.0.0"
    file_system_poll_wait_seconds: float = 2.0  # 0: look once at start-up, as TF Serving does
    max_images_per_request: int = 64
    max_request_bytes: int = 4 * 1024 * 1024
    grpc_workers: int = 16
    cache_dir: str | None = None  # where gs:// versions are downloaded (default: a temp dir)
    shutdown_grace_seconds: float = 10.0

    def validate(self) -> ServeConfig:
        if not self.model_name or "/" in self.model_name or ":" in self.model_name:
            raise ConfigError(f"--model-name {self.model_name!r}: give a plain name like 'generator'")
        if self.max_images_per_request < 1:
            raise ConfigError(f"--max-images-per-request {self.max_images_per_request}: must be at least 1")
        if self.max_request_bytes < 1024:
            raise ConfigError(f"--max-request-bytes {self.max_request_bytes}: must be at least 1024")
        if self.file_system_poll_wait_seconds < 0:
            raise ConfigError("--file-system-poll-wait-seconds must be 0 (look once) or positive")
        for flag, port in (("--rest-port", self.rest_port), ("--grpc-port", self.grpc_port)):
            if port is not None and not 0 <= port <= 65535:
                raise ConfigError(f"{flag} {port}: not a TCP port (0 picks a free one)")
        if self.rest_port is None and self.grpc_port is None:
            raise ConfigError("give --rest-port or --grpc-port (or both)")
        return self


class ServeMetrics:
    """The server's Prometheus metrics, in their own registry so several servers can share a process."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "medsynth_serve_requests", "Requests answered, by API method and canonical status code",
            ["model", "version", "method", "code"], registry=self.registry,
        )
        self.seconds = Histogram(
            "medsynth_serve_request_seconds", "Time from request received to response written",
            ["model", "method"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.images = Counter(
            "medsynth_serve_images", "Synthetic images generated", ["model", "version"],
            registry=self.registry,
        )
        self.version = Gauge(
            "medsynth_serve_model_version", "Version being served (0: none)", ["model"],
            registry=self.registry,
        )

    def observe(self, model: str, version: int | None, method: str, code: str, seconds: float,
                images: int = 0) -> None:
        v = "" if version is None else str(version)
        self.requests.labels(model, v, method, code).inc()
        self.seconds.labels(model, method).observe(seconds)
        if images and code == "OK":
            self.images.labels(model, v).inc(images)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class ServingApp:
    """What both front ends share: name and version resolution, limits, status and metadata protos."""

    def __init__(self, config: ServeConfig, repository: ModelRepository, metrics: ServeMetrics) -> None:
        self.config, self.repository, self.metrics = config, repository, metrics
        self.stopping = threading.Event()
        self._inflight = 0
        self._inflight_lock = threading.Condition()

    # request accounting, so that a shutdown can wait for the answers in flight
    def begin(self) -> None:
        if self.stopping.is_set():
            raise RequestError("UNAVAILABLE", "the server is shutting down; retry against another replica")
        with self._inflight_lock:
            self._inflight += 1

    def end(self) -> None:
        with self._inflight_lock:
            self._inflight -= 1
            self._inflight_lock.notify_all()

    def drain(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._inflight_lock:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._inflight_lock.wait(left)
        return True

    def model(self, name: str, version: int | None) -> LoadedModel:
        if name != self.config.model_name:
            what = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise not_found(f"Servable not found for request: {what}")
        return self.repository.get(version)

    def predict(self, model: LoadedModel, signature: str, inputs: dict[str, np.ndarray],
                output_filter: list[str] | None = None) -> tuple[dict[str, np.ndarray], int]:
        return model.predict(signature, inputs, output_filter=output_filter,
                             max_batch=self.config.max_images_per_request)

    def status_proto(self, name: str, version: int | None) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        if name != self.config.model_name:
            raise not_found(f"Could not find any versions of model {name}")
        states = self.repository.status(version)
        resp = get_model_status_pb2.GetModelStatusResponse()
        state_enum = get_model_status_pb2.ModelVersionStatus.State
        for s in states:
            v = resp.model_version_status.add()
            v.version = s.version
            v.state = state_enum.Value(s.state)
            v.status.SetInParent()
            codes = v.status.DESCRIPTOR.fields_by_name["error_code"].enum_type.values_by_name
            v.status.error_code = codes.get(s.error_code, codes["UNKNOWN"]).number
            v.status.error_message = s.error_message
        return resp

    def metadata_proto(self, name: str, version: int | None, fields: list[str] | None = None) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = ["signature_def"] if fields is None else fields
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for f in fields:
            if f != "signature_def":
                raise invalid(f"Metadata field {f} is not supported")
        model = self.model(name, version)
        resp = get_model_metadata_pb2.GetModelMetadataResponse()
        resp.model_spec.name = name
        resp.model_spec.version.value = model.version
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in model.signature_defs.items():
            sigmap.signature_def[key].CopyFrom(sig)
        resp.metadata["signature_def"].Pack(sigmap)
        return resp
