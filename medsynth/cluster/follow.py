"""Creating a training job through the Kubernetes API and watching it to its end (or deleting it
when the launcher is cancelled or times out)."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from medsynth.cluster.jobs import job_kind, job_manifest
from medsynth.cluster.settings import (
    GROUP,
    KINDS,
    NAMESPACE,
)
from medsynth.errors import MedsynthError
from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")


@dataclass
class JobOutcome:
    name: str
    kind: str
    namespace: str
    state: str  # Succeeded
    seconds: float
    transitions: list[str]


def job_state(obj: dict[str, Any]) -> str:
    """The job's newest true condition (Created, Running, Restarting, Succeeded, Failed, …), or Pending."""
    conditions = [c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    for final in ("Failed", "Succeeded"):
        if any(c.get("type") == final for c in conditions):
            return final
    return conditions[-1].get("type", "Pending") if conditions else "Pending"


def _message(obj: dict[str, Any], state: str) -> str:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == state:
            return c.get("message") or c.get("reason") or ""
    return ""


def _api(api_client: Any | None) -> Any:
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)


# How long a watch's reads may wait beyond its window: the server ends each window; this only
# catches a connection that died without a word.
_READ_SLACK_S = 5


class _Interrupted(BaseException):
    """SIGTERM, raised out of a blocked watch read; a BaseException (like KeyboardInterrupt), so no
    `except Exception` in the client swallows it."""


class _Cancelled:
    """SIGTERM (the run was cancelled, or the pod is being deleted) as an event the follower checks.

    A watch blocks in a socket read for up to a window, and a handler that only set the event would
    let Python resume that read (PEP 475). So while the follower waits on the watch (`next_event`),
    the handler also raises `_Interrupted`, which ends the read at once; anywhere else it only sets
    the event, checked before each read and each window.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: Any = None
        self._reading = False

    def _on_sigterm(self, signum: int, frame: object) -> None:
        self.event.set()
        if self._reading:
            self._reading = False  # once: a second SIGTERM must not break the deletion
            raise _Interrupted

    def __enter__(self) -> _Cancelled:
        try:
            self._old = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: nothing to catch there
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)

    def check(self) -> None:
        if self.event.is_set():
            raise _Interrupted

    def next_event(self, events: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
        """The watch's next event, or None when its window ended; SIGTERM interrupts the wait."""
        self._reading = True
        try:
            self.check()
            return next(events, None)
        finally:
            self._reading = False


@dataclass
class _Job:
    """A job's place in the API, and its versions as the follower reads them."""

    api: Any  # CustomObjectsApi
    version: str
    namespace: str
    plural: str
    name: str
    where: str

    def _unreadable(self, e: Any) -> MedsynthError:  # an ApiException
        return MedsynthError(f"cannot read {self.where}: HTTP {e.status} {e.reason}")

    def _gone(self) -> MedsynthError:
        return MedsynthError(
            f"cannot read {self.where}: HTTP 404 Not Found: it was deleted before it finished, "
            "not by this launcher"
        )

    def versions(
        self, cancelled: _Cancelled, window_s: float, deadline: float | None
    ) -> Iterator[dict[str, Any] | None]:
        """Each version of the job, as the API has it: listed, then watched from there in windows
        of `window_s` seconds (None at each window's end, so the caller can check its timeout).

        A window is a watch the server ends (`timeout_seconds`), so cancellation and the timeout
        are checked between windows, and each window goes on from the last resourceVersion seen
        (bookmarks keep it fresh). A 410 Gone (that version is too old to watch from) lists the
        job again. Raises MedsynthError when the job is deleted or cannot be read, `_Interrupted`
        on SIGTERM.
        """
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import ProtocolError, ReadTimeoutError

        coords = (GROUP, self.version, self.namespace, self.plural)
        selector = f"metadata.name={self.name}"
        watcher = watch.Watch()
        since: str | None = None  # the resourceVersion to watch from; None: list first
        while True:
            cancelled.check()
            if since is None:
                try:
                    listed = self.api.list_namespaced_custom_object(*coords, field_selector=selector)
                except ApiException as e:
                    raise self._unreadable(e) from e
                if not listed.get("items"):
                    raise self._gone()
                yield listed["items"][0]
                since = listed["metadata"]["resourceVersion"]
            window = window_s if deadline is None else min(window_s, deadline - time.monotonic())
            seconds = max(1, math.ceil(window))  # whole seconds; 0 would be the server's default
            events = watcher.stream(
                self.api.list_namespaced_custom_object,
                *coords,
                field_selector=selector,
                resource_version=since,
                allow_watch_bookmarks=True,
                timeout_seconds=seconds,
                _request_timeout=seconds + _READ_SLACK_S,
            )
            try:
                while (event := cancelled.next_event(events)) is not None:
                    obj = event["raw_object"]
                    since = (obj.get("metadata") or {}).get("resourceVersion") or since
                    if event["type"] == "DELETED":
                        raise self._gone()
                    if event["type"] != "BOOKMARK":
                        yield obj
            except ApiException as e:
                if e.status != 410:
                    raise self._unreadable(e) from e
                log.info("%s: resourceVersion %s expired (410 Gone): listing it again", self.where, since)
                since = None
            except (ProtocolError, ReadTimeoutError) as e:  # the connection broke: watch again
                log.info("%s: watch broke off (%s): watching again from %s", self.where, e, since)
            finally:
                events.close()
            yield None


def launch_training_job(
    cfg: TrainConfig,
    kind: str,
    workers: int,
    gpus_per_worker: int,
    image: str,
    namespace: str = NAMESPACE,
    gpu_type: str | None = None,
    spot: bool = False,
    credentials_secret: str | None = None,
    owner: dict[str, Any] | None = None,
    api_client: Any | None = None,
    poll_s: float = 15.0,
    timeout_s: float | None = None,
    on_state: Callable[[str], None] | None = None,
) -> JobOutcome:
    """Create the job (or adopt the one a previous attempt created) and watch it until it ends.

    `poll_s` is the length of one watch window: how often the timeout is checked and the watch
    renewed (SIGTERM does not wait for it). Raises MedsynthError when the job fails, times out or
    the launcher gets SIGTERM (the job is then deleted, and its pods with it); its checkpoints stay
    in the bucket, so the next attempt resumes.
    """
    from kubernetes.client.exceptions import ApiException

    kind = job_kind(kind)
    version, plural, _ = KINDS[kind]
    body = job_manifest(
        kind,
        cfg,
        workers,
        gpus_per_worker,
        image,
        namespace=namespace,
        gpu_type=gpu_type,
        spot=spot,
        credentials_secret=credentials_secret,
        owner=owner,
    )
    name = body["metadata"]["name"]
    api = _api(api_client)
    where = f"{body['kind']} {namespace}/{name}"
    job = _Job(api, version, namespace, plural, name, where)

    def delete(why: str) -> MedsynthError:
        try:
            api.delete_namespaced_custom_object(
                GROUP, version, namespace, plural, name, propagation_policy="Background"
            )
        except ApiException as e:
            if e.status != 404:
                return MedsynthError(f"{where} {why}; deleting it failed: HTTP {e.status} {e.reason}")
        return MedsynthError(f"{where} {why}; deleted it")

    with _Cancelled() as cancelled:
        try:
            api.create_namespaced_custom_object(GROUP, version, namespace, plural, body)
            log.info("created %s", where)
        except ApiException as e:
            if e.status != 409:
                raise MedsynthError(
                    f"cannot create {where}: HTTP {e.status} {e.reason}; is the "
                    f"{'MPI' if kind == 'mpijob' else 'Training'} Operator installed?"
                ) from e
            log.info("%s exists already (an earlier attempt): following it", where)
        start = time.monotonic()
        deadline = None if timeout_s is None else start + timeout_s
        transitions: list[str] = []
        try:
            with closing(job.versions(cancelled, poll_s, deadline)) as versions:
                for obj in versions:
                    if obj is None:  # a window ended
                        if deadline is not None and time.monotonic() > deadline:
                            raise delete(f"did not finish within {timeout_s:.0f} s")
                        continue
                    state = job_state(obj)
                    if not transitions or transitions[-1] != state:
                        transitions.append(state)
                        log.info("%s: %s", where, state)
                        if on_state:
                            on_state(state)
                    if state == "Succeeded":
                        return JobOutcome(
                            name, body["kind"], namespace, state, time.monotonic() - start, transitions
                        )
                    if state == "Failed":
                        raise MedsynthError(f"{where} failed: {_message(obj, state) or 'see its pods logs'}")
        except _Interrupted:
            raise delete("was stopped: the launcher got SIGTERM (run cancelled)") from None
    raise AssertionError("unreachable: the job's versions never end")
