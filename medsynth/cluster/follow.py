"""Creating a training job through the Kubernetes API and following it to its end (or deleting it
when the launcher is cancelled)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
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


class _Cancelled:
    """SIGTERM (the run was cancelled, or the pod is being deleted) as an event the follower waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old: Any = None

    def __enter__(self) -> _Cancelled:
        try:
            self._old = signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
        except ValueError:  # not the main thread: nothing to catch there
            self._old = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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
    """Create the job (or adopt the one a previous attempt created) and wait until it ends.

    Raises MedsynthError when the job fails, times out or the launcher gets SIGTERM (the job is then
    deleted, and its pods with it); its checkpoints stay in the bucket, so the next attempt resumes.
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
        transitions: list[str] = []
        while True:
            try:
                obj = api.get_namespaced_custom_object(GROUP, version, namespace, plural, name)
            except ApiException as e:
                raise MedsynthError(f"cannot read {where}: HTTP {e.status} {e.reason}") from e
            state = job_state(obj)
            if not transitions or transitions[-1] != state:
                transitions.append(state)
                log.info("%s: %s", where, state)
                if on_state:
                    on_state(state)
            if state == "Succeeded":
                return JobOutcome(name, body["kind"], namespace, state, time.monotonic() - start, transitions)
            if state == "Failed":
                raise MedsynthError(f"{where} failed: {_message(obj, state) or 'see its pods logs'}")
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise delete(f"did not finish within {timeout_s:.0f} s")
            if cancelled.event.wait(poll_s):
                raise delete("was stopped: the launcher got SIGTERM (run cancelled)")
