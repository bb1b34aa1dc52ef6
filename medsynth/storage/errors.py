"""Any failure of the storage libraries, as one `StorageError` line that names the URI and the fix."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import medsynth.storage.client as client  # RETRY_SETTINGS is read when a message is made
from medsynth.errors import StorageError
from medsynth.storage.client import endpoint, gcs_client, retry, status_code, transient
from medsynth.storage.uris import Loc


def _one_line(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    """`HTTP 503` for an answer, the exception type for a network failure."""
    code = status_code(exc)
    return f"HTTP {code}" if code is not None else type(exc).__name__


def bucket_exists(bucket: str) -> bool | None:
    try:
        return bool(gcs_client().bucket(bucket).exists(retry=retry()))
    except Exception:
        return None


def storage_error(loc: Loc, exc: BaseException, action: str) -> StorageError:
    """Turn a library exception into one line that names the URI and, where there is one, the fix."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, StorageError):
        return exc
    uri = loc.uri
    if isinstance(exc, api.RetryError) or transient(exc):
        cause = getattr(exc, "cause", None) or exc
        return StorageError(
            f"{uri}: cannot {action}: object storage at {endpoint()} failed ({_describe(cause)}) after "
            f"retrying for up to {client.RETRY_SETTINGS.deadline_s:g}s; check the endpoint, the network and "
            "STORAGE_EMULATOR_HOST")
    if isinstance(exc, api.NotFound) and loc.gcs:
        if bucket_exists(loc.bucket) is False:
            return StorageError(f"{uri}: bucket '{loc.bucket}' does not exist: create it or fix the URI")
        return StorageError(f"{uri}: not found")
    if isinstance(exc, (api.Forbidden, api.Unauthorized)):
        role = "roles/storage.objectViewer" if action.startswith(("read", "list", "download")) else \
            "roles/storage.objectAdmin"
        return StorageError(
            f"{uri}: permission denied to {action} (HTTP {exc.code}): the account in use (workload identity "
            f"or application default credentials) needs {role} on bucket '{loc.bucket}'")
    if isinstance(exc, auth.RefreshError):
        return StorageError(f"{uri}: cannot {action}: the Google Cloud credentials were rejected; "
                            "re-authenticate (workload identity, or `gcloud auth application-default login`)")
    if isinstance(exc, auth.DefaultCredentialsError):
        return StorageError(f"{uri}: cannot {action}: no Google Cloud credentials found; use workload "
                            "identity or application default credentials, or set STORAGE_EMULATOR_HOST")
    if isinstance(exc, api.GoogleAPICallError):
        return StorageError(f"{uri}: cannot {action}: HTTP {exc.code} {_one_line(exc.message)}")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{uri}: not found")
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != uri else ""
        return StorageError(f"{uri}: cannot {action}: {exc.strerror or type(exc).__name__}{where}")
    return StorageError(f"{uri}: cannot {action}: {type(exc).__name__}: {_one_line(str(exc))}")


@contextlib.contextmanager
def storage_errors(loc: Loc, action: str) -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        raise storage_error(loc, e, action) from e
