"""kfp.Client with per-request timeouts, bounded retries and one health check, and kfp's noise kept quiet."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import warnings
from collections.abc import Iterator
from typing import Any


@functools.cache
def timeout_client_class() -> type:
    """kfp.Client with per-request timeouts, bounded retries and a single health check.

    kfp.Client sends every request without a timeout (a black-holed host hangs forever) and,
    when no namespace is set, retries its health check 5 times with 5 s sleeps. The subclass keeps
    kfp's API and auth handling and only swaps the REST transport.
    """
    import kfp
    import kfp_server_api
    import urllib3
    from kfp_server_api import rest

    class _TimeoutRest(rest.RESTClientObject):
        def __init__(self, configuration: Any, timeout: float) -> None:
            super().__init__(configuration)
            self._medsynth_timeout = (min(timeout, 10.0), timeout)  # (connect, read); floats need a tuple

        def request(self, method, url, query_params=None, headers=None, body=None, post_params=None,
                    _preload_content=True, _request_timeout=None):
            return super().request(method, url, query_params, headers, body, post_params,
                                   _preload_content, _request_timeout or self._medsynth_timeout)

    class TimeoutClient(kfp.Client):
        def __init__(self, *, timeout: float, retries: int, **kwargs: Any) -> None:
            self._medsynth_timeout = timeout
            self._medsynth_retries = retries
            self._medsynth_health = None
            self._medsynth_version: str | None = None
            super().__init__(**kwargs)
            self._medsynth_transport()

        def _medsynth_transport(self) -> None:
            api_client = self._healthz_api.api_client
            if isinstance(api_client.rest_client, _TimeoutRest):
                return
            # Connection failures are retried for every method (nothing was sent); read failures and
            # 502/503/504 only for idempotent ones, so a POST never creates a run twice.
            api_client.configuration.retries = urllib3.Retry(
                total=self._medsynth_retries, connect=self._medsynth_retries, read=self._medsynth_retries,
                status=self._medsynth_retries, status_forcelist=(502, 503, 504), backoff_factor=0.2,
                raise_on_status=False,
            )
            api_client.rest_client = _TimeoutRest(api_client.configuration, self._medsynth_timeout)

        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            self._medsynth_transport()  # kfp calls this from __init__, before our transport exists
            # The generated model keeps only multi_user; the release is in the raw answer: tag_name
            # from the API server, apiServerTagName through the KFP UI's proxy.
            raw = self._healthz_api.healthz_service_get_healthz(_preload_content=False)
            try:
                body = json.loads(raw.data or b"{}")
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            self._medsynth_version = body.get("tag_name") or body.get("apiServerTagName") or None
            self._medsynth_health = kfp_server_api.V2beta1GetHealthzResponse(
                multi_user=bool(body.get("multi_user", body.get("apiServerMultiUser", False)))
            )
            return self._medsynth_health

    return TimeoutClient


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """kfp prints links to stdout and warns on every construction, urllib3 logs each retry; the
    outcome is reported once, as a result or as one KfpError line."""
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    pool_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        pool_log.setLevel(level)
