"""Any failure talking to KFP as one `KfpError` line: what we were doing, where, and why; no token."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from medsynth.errors import MedsynthError


class KfpError(MedsynthError):
    """The Kubeflow Pipelines host cannot be reached or refused a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status KFP answered, None when it was not reached

    @property
    def transient(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


def describe(e: BaseException, host: str, doing: str, timeout: float) -> str:
    """One line for any failure talking to KFP: what we were doing, where, and why."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    where = redact_url(host)
    if isinstance(e, ApiException):
        if not e.status:
            return f"cannot reach KFP at {where} while {doing}: {one_line(e.reason or e)}"
        detail = _body_message(e.body)
        text = f"KFP at {where} answered HTTP {e.status} {e.reason or ''}".rstrip() + f" while {doing}"
        if detail:
            text += f": {detail}"
        if e.status in (401, 403):
            text += (" (pass a token: $KF_PIPELINES_TOKEN or --token-file, or --in-cluster in a pod;"
                     " multi-user Kubeflow also needs --namespace)")
        elif e.status == 404 and doing == "connecting":
            text += " (not a KFP API? behind the Kubeflow dashboard the API is at https://HOST/pipeline)"
        return text
    reason: BaseException = e
    if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
        reason = e.reason
    prefix = f"cannot reach KFP at {where} while {doing}"
    # urllib3 2.x: NameResolutionError < NewConnectionError < ConnectTimeoutError, so this order
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return f"{prefix}: unknown host {urlsplit(host).hostname!r}"
    if isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionError):
        cause = _os_error(reason)
        if cause is None and isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
            return f"{prefix}: connection timed out after {min(timeout, 10.0):g} s"
        return f"{prefix}: {cause.strerror.lower() if cause else 'connection failed'}"
    if isinstance(reason, urllib3.exceptions.ConnectTimeoutError):
        return f"{prefix}: connection timed out after {min(timeout, 10.0):g} s"
    if isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        return f"{prefix}: no answer within {timeout:g} s (--api-timeout)"
    if isinstance(reason, urllib3.exceptions.SSLError):
        return f"{prefix}: TLS failed ({one_line(str(reason))[:200]})"
    if isinstance(reason, urllib3.exceptions.ProtocolError | urllib3.exceptions.HTTPError):
        return f"{prefix}: connection broken ({one_line(str(reason))[:200]})"
    if isinstance(e, ValueError):
        return f"KFP client refused while {doing}: {one_line(str(e))[:300]}"
    if isinstance(e, OSError):
        return f"{doing}: {e.strerror or e} ({getattr(e, 'filename', '') or type(e).__name__})"
    return f"{doing} on {where} failed: {type(e).__name__}: {one_line(str(e))[:300]}"


def _os_error(e: BaseException | None) -> OSError | None:
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.strerror:
            return e
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _body_message(body: Any) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return one_line(body)[:300]
    if isinstance(data, dict):
        msg = data.get("message") or data.get("error") or ""
        return one_line(msg)[:300] if msg else one_line(json.dumps(data))[:300]
    return one_line(str(data))[:300]


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url
