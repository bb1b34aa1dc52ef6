"""TF Serving's REST API (`/v1/models/...`) over the standard library's threading HTTP server.

Paths, JSON shapes, error bodies and status codes follow TF Serving's `http_rest_api_handler.cc`;
`/monitoring/prometheus/metrics` serves the Prometheus page as its monitoring config does.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

from medsynth.serving.app import METRICS_PATH, ServingApp
from medsynth.serving.protocol import (
    RequestError,
    error_json,
    invalid,
    json_inputs_to_arrays,
    outputs_to_json,
    parse_predict_json,
)

log = logging.getLogger("medsynth.serve")

PREDICT_RE = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)"
)
STATUS_RE = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
DRAIN_LIMIT = 64 * 1024 * 1024  # read (and drop) at most this much of an oversized body before answering


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


def start_rest(app: ServingApp, host: str, port: int) -> tuple[_Server, threading.Thread, int]:
    handler = type("MedsynthRestHandler", (_Handler,), {"app": app})
    httpd = _Server((host, port), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                              name="medsynth-rest", daemon=True)
    thread.start()
    return httpd, thread, httpd.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    app: ServingApp
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "medsynth-serve"
    timeout = 120  # an idle keep-alive connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out as two writes: no delayed-ACK stall between them

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    # ------------------------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        app = self.app
        path = urlsplit(self.path).path
        if method == "GET" and path == METRICS_PATH:
            body, ctype = app.metrics.render()
            self._send(200, body, ctype)
            return
        t0 = time.perf_counter()
        kind, version, images, code = "rest_other", None, 0, "OK"
        try:
            app.begin()
        except RequestError as e:
            self.close_connection = True
            self._send(e.http_status, error_json(e.message))
            return
        try:
            body = self._read_body() if method in ("POST", "PUT") else b""
            m = PREDICT_RE.fullmatch(path) if method == "POST" else None
            s = STATUS_RE.fullmatch(path) if method == "GET" else None
            if m:
                kind = "rest_predict"
                name, version, label, verb = unquote(m.group(1)), _version(m.group(2)), m.group(3), m.group(4)
                _no_label(label)
                if verb.lower() != "predict":
                    raise invalid(f"{verb} needs a classification or regression signature; this server's "
                                  "models have predict signatures: use :predict")
                signature, raw, fmt = parse_predict_json(body)
                model = app.model(name, version)
                version = model.version
                arrays = json_inputs_to_arrays(raw, fmt, model.input_specs(signature))
                outputs, images = app.predict(model, signature, arrays)
                out = outputs_to_json(outputs, fmt)
            elif s and s.group(1):
                name, version, label = unquote(s.group(1)), _version(s.group(2)), s.group(3)
                _no_label(label)
                if s.group(4):
                    kind = "rest_metadata"
                    out = _metadata_json(app.metadata_proto(name, version))
                else:
                    kind = "rest_status"
                    out = _status_json(app.status_proto(name, version))
            elif s:
                raise invalid("Missing model name in request.")
            elif path.lower().startswith("/v1/"):
                raise invalid(f"Malformed request: {method} {path}")
            else:
                raise RequestError("NOT_FOUND", f"no such path: {method} {path} (try /v1/models/<name>)")
            self._send(200, out)
        except RequestError as e:
            code = e.code
            self._send(e.http_status, error_json(e.message))
        except Exception as e:  # noqa: BLE001 - any bug becomes a 500 for this request, not a dead server
            code = "INTERNAL"
            log.exception("internal error answering %s %s", method, path)
            self._send(500, error_json(f"internal error: {type(e).__name__}: {e}"))
        finally:
            app.end()
            if kind != "rest_other":
                seconds = time.perf_counter() - t0
                app.metrics.observe(app.config.model_name, version, kind, code, seconds, images)
            if app.stopping.is_set():
                self.close_connection = True

    def _read_body(self) -> bytes:
        limit = self.app.config.max_request_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = int(self.headers.get("Content-Length", "0") or 0)
        except ValueError:
            self.close_connection = True
            raise invalid("Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise invalid("Content-Length is negative")
        if length > limit:
            self._discard(length)
            raise invalid(f"request body is {length} bytes; this server accepts at most {limit} "
                          "(--max-request-bytes): ask for fewer images per request")
        return self.rfile.read(length) if length else b""

    def _read_chunked(self, limit: int) -> bytes:
        parts, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            except ValueError:
                self.close_connection = True
                raise invalid("malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > limit:
                self.close_connection = True
                raise invalid(f"request body is over {limit} bytes (--max-request-bytes): "
                              "ask for fewer images per request")
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _discard(self, length: int) -> None:
        """Read an oversized body away, so that the client sees our 400 rather than a reset connection."""
        self.close_connection = True
        left = min(length, DRAIN_LIMIT)
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            left -= len(chunk)

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def _version(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise invalid(f"Failed to convert version: {text} to numeric.") from None


def _no_label(label: str | None) -> None:
    if label:
        raise invalid(f"Unrecognized servable version label: {unquote(label)} "
                      "(medsynth serve has no labels; use /versions/<n>)")


def _status_json(resp: Any) -> bytes:
    from google.protobuf import json_format

    doc = json_format.MessageToDict(resp, including_default_value_fields=True)
    return json.dumps(doc, indent=1).encode()


def _metadata_json(resp: Any) -> bytes:
    """As TF Serving writes it: model_spec and the SignatureDefMap, proto field names kept."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    sigmap = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sigmap)
    opts = {"including_default_value_fields": True, "preserving_proto_field_name": True}
    doc = {
        "model_spec": json_format.MessageToDict(resp.model_spec, **opts),
        "metadata": {"signature_def": json_format.MessageToDict(sigmap, **opts)},
    }
    return json.dumps(doc, indent=1).encode()
