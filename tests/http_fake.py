"""The plumbing every hand-written HTTP fake in these tests shares.

`FakeServer(handle)` serves `handle(request)` for every method on a free port of 127.0.0.1, each
connection in its own daemon thread; use it as a context manager, or `start()` / `stop()`.
`handle` gets the `BaseHTTPRequestHandler` and answers through it (`send_json` for JSON,
`send_lines` for a stream of JSON lines such as a Kubernetes watch).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeServer:
    """`protocol` "HTTP/1.0" closes every connection after its answer (for handlers that leave a
    request body unread); `quiet` drops the traceback of a connection that broke (on purpose)."""

    def __init__(
        self,
        handle: Callable[[BaseHTTPRequestHandler], Any],
        *,
        protocol: str = "HTTP/1.1",
        quiet: bool = False,
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
                pass

            def _any(self) -> None:
                handle(self)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any  # noqa: N815

        server_class = _QuietServer if quiet else ThreadingHTTPServer
        self.server = server_class(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass


def send_json(
    h: BaseHTTPRequestHandler, status: int, payload: Any, content_type: str = "application/json"
) -> None:
    """Answer `payload` (JSON-encoded unless it is bytes already); a client that hung up gets nothing."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def send_lines(h: BaseHTTPRequestHandler, status: int, lines: Iterable[Any]) -> None:
    """Stream each of `lines` JSON-encoded on a line of its own, as it comes (`lines` may wait
    between them), then close the connection; a client that hung up ends the stream.

    Chunked, as an API server sends a watch: a body of unknown length without it is read to its
    end before the client sees a line. HTTP/1.1 for this answer alone (chunks need it), with
    `Connection: close`, so a server on HTTP/1.0 still closes every connection.
    """
    h.protocol_version = "HTTP/1.1"
    try:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Connection", "close")
        h.end_headers()
        for line in lines:
            data = json.dumps(line).encode() + b"\n"
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        h.wfile.write(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
