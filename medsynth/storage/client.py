"""The google-cloud-storage client, and which failures are worth retrying, with what backoff.

Transient failures (429, 5xx, connection resets and timeouts) are retried with exponential backoff and
full jitter on every call; `RETRY_SETTINGS` is read on each call, so a test can shorten it here.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Any

from medsynth.errors import StorageError

log = logging.getLogger("medsynth.storage")


@dataclass(frozen=True)
class RetrySettings:
    """Backoff for transient errors; the deadline bounds each call, not a whole transfer."""

    initial_s: float = 1.0
    maximum_s: float = 32.0
    multiplier: float = 2.0
    deadline_s: float = 300.0


RETRY_SETTINGS = RetrySettings()
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CLIENTS: dict[tuple[str | None, str | None], Any] = {}
_CLIENT_LOCK = threading.Lock()


def gcs_client() -> Any:
    """One client per endpoint and project, shared by all threads.

    With STORAGE_EMULATOR_HOST set, google-cloud-storage 3.x uses anonymous credentials; otherwise
    application default credentials (workload identity in the cluster). No key ever passes through here.
    """
    host = os.environ.get("STORAGE_EMULATOR_HOST") or None
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or ("medsynth-emulator" if host else None)
    with _CLIENT_LOCK:
        client = _CLIENTS.get((host, project))
        if client is None:
            from google.auth.exceptions import DefaultCredentialsError
            from google.cloud import storage as gcs

            try:
                client = gcs.Client(project=project) if project else gcs.Client()
            except DefaultCredentialsError:
                raise StorageError(
                    "no Google Cloud credentials found: in the cluster use workload identity; locally run "
                    "`gcloud auth application-default login`, or set STORAGE_EMULATOR_HOST for an emulator"
                ) from None
            _ = client._http  # create the shared session now, not racily inside worker threads
            _CLIENTS[(host, project)] = client
        return client


def endpoint() -> str:
    """The endpoint for messages, without any user:password part."""
    host = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    parts = urllib.parse.urlsplit(host if "://" in host else f"http://{host}")
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def transient(exc: BaseException) -> bool:
    """Worth retrying: throttling, server errors, dropped or timed-out connections."""
    import requests
    import urllib3
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.cloud.storage.exceptions import InvalidResponse

    if isinstance(exc, api.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in _TRANSIENT_STATUS
    if isinstance(exc, auth.TransportError):  # network trouble while fetching a token
        return True
    return isinstance(exc, (ConnectionError, TimeoutError, http.client.HTTPException,
                            requests.ConnectionError, requests.Timeout,
                            requests.exceptions.ChunkedEncodingError,
                            urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError,
                            urllib3.exceptions.PoolError))


def _log_retry(exc: BaseException) -> None:
    log.debug("transient storage error, retrying: %s", type(exc).__name__)


def retry() -> Any:
    from google.api_core.retry import Retry

    s = RETRY_SETTINGS
    return Retry(predicate=transient, initial=s.initial_s, maximum=s.maximum_s, multiplier=s.multiplier,
                 timeout=s.deadline_s, on_error=_log_retry)


def status_code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None
