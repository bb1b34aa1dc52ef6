"""`medsynth serve`: a local server that speaks TF Serving's REST and gRPC APIs for one model.

In the cluster the generator is served by the real `tensorflow/serving` image; on a laptop, in CI and in
tests this server stands in for it, so that one client (`medsynth generate`) works against both. It
serves `<model_base_path>/<version>/` like TF Serving (see `repository.py` for the version policy),
enforces per-request limits, and exports Prometheus metrics at TF Serving's monitoring path.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsynth.errors import ConfigError, ServingError
from medsynth.serving.protocol import RequestError, invalid, not_found
from medsynth.serving.repository import LoadedModel, ModelRepository

log = logging.getLogger("medsynth.serve")

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


@dataclass
class ServerHandle:
    """A running server: its ports (the real ones when 0 was asked for) and a way to stop it."""

    app: ServingApp
    repository: ModelRepository
    rest_port: int | None
    grpc_port: int | None
    _http: Any = None
    _http_thread: threading.Thread | None = None
    _grpc: Any = None
    _stopped: bool = False

    @property
    def metrics(self) -> ServeMetrics:
        return self.app.metrics

    def stop(self, grace: float | None = None) -> None:
        """Refuse new requests, let those in flight finish (up to `grace` seconds), then close."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.app.config.shutdown_grace_seconds if grace is None else grace
        self.app.stopping.set()
        grpc_done = self._grpc.stop(grace) if self._grpc is not None else None
        if self._http is not None:
            self._http.shutdown()  # stop accepting; handler threads finish their request
        self.app.drain(grace)
        if self._http is not None:
            self._http.server_close()
        if grpc_done is not None:
            grpc_done.wait(grace)
        self.repository.stop()
        log.info("medsynth serve stopped")

    def wait(self) -> None:
        """Block until `stop()` (e.g. from a signal handler)."""
        while not self._stopped:
            time.sleep(0.2)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(config: ServeConfig) -> ServerHandle:
    """Load the newest version under the base path and start the REST and gRPC servers (non-blocking)."""
    config.validate()
    metrics = ServeMetrics()
    repository = ModelRepository(
        config.model_base_path,
        config.model_name,
        poll_wait_seconds=config.file_system_poll_wait_seconds,
        cache_dir=config.cache_dir,
    )
    app = ServingApp(config, repository, metrics)

    def on_change() -> None:
        metrics.version.labels(config.model_name).set(repository.served_version() or 0)

    repository._on_change = on_change
    repository.start()
    on_change()
    if repository.served_version() is None:
        from pathlib import Path

        missing = not repository.gcs and not Path(config.model_base_path).is_dir()
        why = " (the directory does not exist)" if missing else ""
        log.warning("no loadable version of %s under %s yet%s; polling every %g s",
                    config.model_name, config.model_base_path, why, config.file_system_poll_wait_seconds)
    handle = ServerHandle(app, repository, None, None)
    try:
        if config.grpc_port is not None:
            from medsynth.serving.grpc_service import start_grpc

            handle._grpc, handle.grpc_port = start_grpc(app, config.host, config.grpc_port)
        if config.rest_port is not None:
            from medsynth.serving.rest import start_rest

            try:
                handle._http, handle._http_thread, handle.rest_port = start_rest(
                    app, config.host, config.rest_port
                )
            except OSError as e:
                raise ServingError(
                    f"--rest-port {config.rest_port}: cannot listen on {config.host} ({e.strerror}); "
                    "pick another port"
                ) from None
    except BaseException:
        handle.stop(grace=0)
        raise
    return handle


def run_server(config: ServeConfig, *, ready: Any = None) -> int:
    """`medsynth serve`: serve until SIGTERM or SIGINT, then shut down gracefully."""
    handle = serve(config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received signal %d: shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        parts = []
        if handle.rest_port is not None:
            parts.append(f"REST on {config.host}:{handle.rest_port}")
        if handle.grpc_port is not None:
            parts.append(f"gRPC on {config.host}:{handle.grpc_port}")
        version = handle.repository.served_version()
        print(f"serving {config.model_name} from {config.model_base_path} "
              f"(version {version if version is not None else 'none yet'}): {', '.join(parts)}", flush=True)
        if ready is not None:
            ready(handle)
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0
