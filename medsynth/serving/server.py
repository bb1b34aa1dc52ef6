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

from medsynth.errors import ServingError
from medsynth.serving.app import ServeConfig, ServeMetrics, ServingApp
from medsynth.serving.repository import ModelRepository

log = logging.getLogger("medsynth.serve")


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
        # The transports are imported here: gRPC's protos load TensorFlow, which a REST-only server and a
        # bad flag (reported by validate() above) do without.
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
