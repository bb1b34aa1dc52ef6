"""A small HTTP proxy that breaks requests on purpose, so tests can prove that storage retries work.

It sits between google-cloud-storage and the GCS emulator. For a configurable share of
requests it answers 503, resets the connection before or after the emulator saw the request,
cuts a response short, or flips a byte of a downloaded object; it can also refuse every write
(a read-only bucket) or fail every request after the first N (an outage in the middle of an
upload). Fault decisions come from one `random.Random(seed)` drawn in request order, so a run
is reproducible up to thread scheduling.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import http.client
import random
import socket
import struct
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler

from http_fake import FakeServer, send_json

KINDS = ("503", "reset", "reset_after", "truncate", "corrupt")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade", "content-length"}


class FaultProxy:
    """Forward to `upstream` (http://host:port); `endpoint` is what STORAGE_EMULATOR_HOST should point at."""

    def __init__(self, upstream: str, *, rate: float = 0.0, seed: int = 0, kinds: tuple[str, ...] = KINDS,
                 forbid_writes: bool = False, fail_after: int | None = None) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; choose from {KINDS}")
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rate, self.kinds = rate, tuple(kinds)
        self.forbid_writes, self.fail_after = forbid_writes, fail_after
        self.stats: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        # Quiet: clients hang up on purpose here (after our own resets); nothing to report.
        self._server = FakeServer(functools.partial(_handle, self), quiet=True)

    @property
    def endpoint(self) -> str:
        return self._server.url

    @property
    def faults(self) -> int:
        return sum(n for k, n in self.stats.items() if k in KINDS)

    def start(self) -> FaultProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def decide(self, method: str, media: bool = False) -> str | None:
        with self._lock:
            self.stats["requests"] += 1
            if self.forbid_writes and method not in ("GET", "HEAD"):
                self.stats["forbidden"] += 1
                return "forbidden"
            if self.fail_after is not None and self.stats["requests"] > self.fail_after:
                self.stats["outage"] += 1
                return "outage"
            if self._rng.random() < self.rate:
                kind = self._rng.choice(self.kinds)
                if kind == "corrupt" and not media:
                    kind = "503"  # only object bytes get corrupted; a garbled JSON answer is another story
                self.stats[kind] += 1
                return kind
            return None


def _handle(proxy: FaultProxy, h: BaseHTTPRequestHandler) -> None:
    body = _read_body(h)
    media = h.command == "GET" and ("alt=media" in h.path or h.path.startswith("/download/"))
    fault = proxy.decide(h.command, media)
    if fault == "forbidden":
        return _json(h, 403, "medsynth-test@example.iam.gserviceaccount.com does not have "
                             "storage.objects.create access to the Google Cloud Storage object.")
    if fault in ("503", "outage"):
        return _json(h, 503, "Service Unavailable (injected)")
    if fault == "reset":
        return _reset(h)
    status, reason, headers, data = _forward(proxy, h, body)
    if fault == "reset_after" or (fault == "truncate" and len(data) < 2):
        return _reset(h)
    if fault == "corrupt" and data:
        i = len(data) // 2
        data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
    h.send_response(status, reason)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    if h.command == "HEAD":
        return None
    if fault == "truncate":
        h.wfile.write(data[: len(data) // 2])
        h.wfile.flush()
        return _reset(h)
    h.wfile.write(data)
    return None


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(h.rfile.read(size))
            h.rfile.readline()
    n = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(n) if n else b""


def _forward(
    proxy: FaultProxy, h: BaseHTTPRequestHandler, body: bytes
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    # The Host header goes through unchanged: the emulator builds resumable-upload URLs from it,
    # so follow-up requests come back through this proxy.
    headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP_BY_HOP}
    if body or h.command in ("POST", "PUT", "PATCH"):
        headers["Content-Length"] = str(len(body))
    conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
    try:
        # The emulator may answer (404) and hang up before it has read the whole body.
        with contextlib.suppress(OSError):
            conn.request(h.command, h.path, body=body or None, headers=headers)
        try:
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            return 502, "Bad Gateway", [("Content-Type", "text/plain")], b"upstream failed"
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        return resp.status, resp.reason, out, data
    finally:
        conn.close()


def _json(h: BaseHTTPRequestHandler, code: int, message: str) -> None:
    error = {"code": code, "message": message, "errors": [{"message": message}]}
    send_json(h, code, {"error": error}, content_type="application/json; charset=UTF-8")


def _reset(h: BaseHTTPRequestHandler) -> None:
    """Close with RST, like a load balancer dropping the connection."""
    h.close_connection = True
    try:
        h.wfile.flush()
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()
    except OSError:
        pass
