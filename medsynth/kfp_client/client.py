"""`PipelineClient`: one KFP host; submit, follow, list and schedule runs of medsynth-train."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from medsynth.errors import ConfigError, MedsynthError
from medsynth.kfp_client.cron import to_kfp_cron
from medsynth.kfp_client.errors import KfpError, describe, one_line, redact_url
from medsynth.kfp_client.params import coerce_params, load_package, pipeline_parameters
from medsynth.kfp_client.results import TERMINAL_STATES, RunInfo, ScheduleInfo
from medsynth.kfp_client.transport import quiet, timeout_client_class

DEFAULT_EXPERIMENT = "medsynth"
DEFAULT_SCHEDULE_NAME = "medsynth-retrain"
# What the CLI reads as defaults of --host, --namespace and --token-file, and the token itself
# (kfp.Client reads only KF_PIPELINES_ENDPOINT of these, and only when given no host).
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp's own: where run links point when the UI is elsewhere
# The oldest backend medsynth-train runs correctly on. The driver substitutes `{{$.pipeline_job_uuid}}`
# given as a whole task-input constant only from 2.5.0 (kubeflow/pipelines#11599, commit 6a13f4b, not
# in 2.4.x: its driver passes `runtimeValue.GetConstant()` through verbatim); it honours the final
# task's GPU count given as a pipeline parameter (resourceCount) from 2.4. Older backends share one
# run directory between runs (every train and compare task fails on the unsubstituted id) or give the
# final training no GPU.
MIN_KFP_VERSION = (2, 5)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class PipelineClient:
    """A connection to one KFP host. Nothing is sent until the first call.

    Auth, at most one of: `token` (a bearer token, e.g. `gcloud auth print-access-token` behind
    IAP, or a Kubeflow/Dex session token), `token_file` (re-read on every request, like a
    projected service-account token), `in_cluster=True` (kfp's ServiceAccountTokenVolumeCredentials:
    $KF_PIPELINES_SA_TOKEN_PATH or /var/run/secrets/kubeflow/pipelines/token). None of them:
    no auth header (a port-forward to ml-pipeline-ui or ml-pipeline:8888).
    """

    def __init__(
        self,
        host: str,
        *,
        namespace: str | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        in_cluster: bool = False,
        timeout: float = 30.0,
        retries: int = 3,
    ) -> None:
        if not host or not re.match(r"https?://[^/\s]+", host):
            raise ConfigError(
                f"--host {host!r}: give the KFP API URL with http:// or https://, e.g. "
                "https://kubeflow.example.com/pipeline or http://localhost:8080 (a port-forward)"
            )
        if sum(bool(x) for x in (token, token_file, in_cluster)) > 1:
            raise ConfigError("choose one way to authenticate: a token, a token file or in-cluster "
                              "credentials")
        if token_file is not None:
            try:
                Path(token_file).read_text()
            except OSError as e:
                raise ConfigError(f"--token-file {token_file}: cannot read it ({e.strerror or e})") from None
        if timeout <= 0:
            raise ConfigError(f"--api-timeout {timeout}: must be > 0 seconds")
        self.host = host.rstrip("/")
        self.namespace = namespace or None
        self._token = token
        self._token_file = str(token_file) if token_file is not None else None
        self._in_cluster = in_cluster
        self._timeout = float(timeout)
        self._retries = retries
        self._client: Any = None
        self.multi_user: bool | None = None
        self.version: str | None = None  # the backend's release (healthz tag_name), once connected

    def __repr__(self) -> str:  # never the token
        return f"PipelineClient(host={redact_url(self.host)!r}, namespace={self.namespace!r})"

    # - connection -
    @property
    def ui(self) -> str:
        return os.environ.get(UI_ENV, self.host).rstrip("/")

    def connect(self) -> PipelineClient:
        """Build the kfp.Client and check the host answers as a KFP API (healthz)."""
        if self._client is not None:
            return self
        from kfp.client import ServiceAccountTokenVolumeCredentials

        credentials = None
        if self._token_file:
            credentials = ServiceAccountTokenVolumeCredentials(self._token_file)
        elif self._in_cluster:
            from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH

            path = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
            if not os.access(path, os.R_OK):
                raise ConfigError(
                    f"--in-cluster: no readable KFP token at {path}; mount a projected service-account "
                    "token with audience pipelines.kubeflow.org there (or set KF_PIPELINES_SA_TOKEN_PATH)"
                )
            credentials = ServiceAccountTokenVolumeCredentials(path)
        with self._api("connecting"):
            client = timeout_client_class()(
                timeout=self._timeout,
                retries=self._retries,
                host=self.host,
                namespace=self.namespace or "kubeflow",
                existing_token=self._token or None,
                credentials=credentials,
            )
            health = client._medsynth_health or client.get_kfp_healthz()
        self.multi_user = bool(getattr(health, "multi_user", False))
        self.version = client._medsynth_version
        if self.namespace is None and self.multi_user and not client.get_user_namespace():
            raise ConfigError(
                f"{redact_url(self.host)} is a multi-user Kubeflow: pass --namespace (your profile "
                "namespace)"
            )
        self._client = client
        return self

    @property
    def kfp(self) -> Any:
        """The underlying kfp.Client (connected), for anything this class does not cover."""
        return self.connect()._client

    @contextlib.contextmanager
    def _api(self, doing: str) -> Iterator[None]:
        """Turn whatever kfp, kfp_server_api or urllib3 raises into one KfpError line."""
        try:
            with quiet():
                yield
        except MedsynthError:
            raise
        except Exception as e:  # translated into one line, never swallowed
            status = getattr(e, "status", None) or None
            raise KfpError(self._scrub(describe(e, self.host, doing, self._timeout)),
                           status if isinstance(status, int) else None) from None

    def _scrub(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text

    def require_version(self) -> None:
        """Refuse to create runs on a backend older than MIN_KFP_VERSION (see there for why)."""
        self.connect()
        release = parse_kfp_version(self.version)
        floor = ".".join(map(str, MIN_KFP_VERSION))
        if release is None:
            logging.getLogger("medsynth").warning(
                "KFP at %s reports no release (%r): cannot check it is >= %s",
                redact_url(self.host), self.version, floor,
            )
        elif release[:2] < MIN_KFP_VERSION:
            raise KfpError(
                f"KFP at {redact_url(self.host)} is {self.version}; medsynth-train needs Kubeflow Pipelines "
                f">= {floor} (older backends leave the run id placeholder unsubstituted, and every train and "
                "compare task fails on it): upgrade the backend"
            )

    # - experiments -
    def experiment_id(self, name: str, *, create: bool) -> str:
        """The id of the experiment called `name` in this namespace (created if asked)."""
        kfp = self.kfp
        if create:  # kfp looks it up by name first and creates it only when missing
            with self._api(f"getting or creating experiment {name!r}"):
                return kfp.create_experiment(name=name, namespace=self.namespace).experiment_id
        with self._api(f"looking up experiment {name!r}"):
            found = kfp.list_experiments(
                filter=_name_filter(name), namespace=self.namespace, page_size=2
            ).experiments or []
        if len(found) > 1:
            raise KfpError(f"several experiments are called {name!r}: pass a unique --experiment")
        if not found:
            raise KfpError(f"no experiment called {name!r} on {redact_url(self.host)}")
        return found[0].experiment_id

    # - runs -
    def submit(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        pipeline_root: str | None = None,
        package: str | Path,
        service_account: str | None = None,
        enable_caching: bool | None = None,
    ) -> RunInfo:
        """Create one run of the pipeline `package` (a compiled YAML; `medsynth submit` compiles
        medsynth-train from this code when given none)."""
        check_pipeline_root(pipeline_root)
        path = Path(package)
        spec = load_package(path)
        values = coerce_params(params or {}, pipeline_parameters(spec))
        self.require_version()
        name = run_name or f"{spec['pipelineInfo']['name']} {_now():%Y-%m-%d %H-%M-%S}"
        exp = self.experiment_id(experiment, create=True)
        with self._api("creating the run"):
            run = self.kfp.run_pipeline(
                experiment_id=exp,
                job_name=name,
                pipeline_package_path=str(path),
                params=values,
                pipeline_root=pipeline_root,
                enable_caching=enable_caching,
                service_account=service_account,
            )
        return self._run_info(run)

    def get_run(self, run_id: str) -> RunInfo:
        with self._api(f"reading run {run_id}"):
            return self._run_info(self.kfp.get_run(run_id))

    def wait(
        self,
        run_id: str,
        *,
        timeout: float | None = None,
        poll: float = 10.0,
        stream: TextIO | None = None,
        max_poll_failures: int = 5,
    ) -> RunInfo:
        """Follow a run until it ends, with a progress line (tasks done / tasks in the DAG).

        Transient API failures (a restarting API server) are tolerated `max_poll_failures` times in
        a row. Returns the final RunInfo (check `.succeeded`); raises KfpError on timeout.
        """
        from medsynth.progress import Progress

        start = time.monotonic()
        total = None
        failures = 0
        info: RunInfo | None = None
        progress: Progress | None = None
        try:
            while True:
                try:
                    with self._api(f"reading run {run_id}"):
                        raw = self.kfp.get_run(run_id)
                    failures = 0
                except KfpError as e:
                    failures += 1
                    if not e.transient or failures >= max_poll_failures:
                        raise
                    time.sleep(poll)
                    continue
                info = self._run_info(raw)
                if progress is None:
                    total = _count_tasks(raw.pipeline_spec)
                    progress = Progress(total, f"run {info.name}", unit="task", stream=stream)
                done = sum(1 for _, s in info.tasks if s in TERMINAL_STATES)
                done = min(done, total) if total else done
                if info.done:  # close() draws the final line
                    progress.n, progress.postfix = done, info.state
                    return info
                progress.update(done - progress.n, postfix=info.state)
                if timeout is not None and time.monotonic() - start > timeout:
                    raise KfpError(
                        f"run {info.run_id} is still {info.state} after {timeout:g} s; it keeps running on "
                        f"the cluster: {info.url}"
                    )
                time.sleep(poll)
        finally:
            if progress is not None:
                progress.close()

    def list_runs(self, *, experiment: str | None = None, n: int = 20) -> list[RunInfo]:
        """The `n` most recent runs (of one experiment, or of the namespace)."""
        if n < 1:
            raise ConfigError(f"-n {n}: must be at least 1")
        exp = self.experiment_id(experiment, create=False) if experiment else None
        runs: list[RunInfo] = []
        token = ""
        with self._api("listing runs"):
            while len(runs) < n:
                page = self.kfp.list_runs(
                    page_token=token, page_size=min(n - len(runs), 100), sort_by="created_at desc",
                    experiment_id=exp, namespace=self.namespace,
                )
                runs += [self._run_info(r) for r in page.runs or []]
                token = page.next_page_token or ""
                if not token:
                    break
        return runs[:n]

    # - schedules -
    def schedule(
        self,
        cron: str,
        params: Mapping[str, Any] | None = None,
        *,
        name: str = DEFAULT_SCHEDULE_NAME,
        experiment: str = DEFAULT_EXPERIMENT,
        pipeline_root: str | None = None,
        package: str | Path,
        service_account: str | None = None,
        max_concurrency: int = 1,
        catchup: bool = False,
        enabled: bool = True,
        enable_caching: bool | None = None,
    ) -> ScheduleInfo:
        """Create a recurring run (retraining on a schedule). `cron` is standard 5-field cron (or
        KFP's 6-field form); times are in the KFP scheduler's time zone, UTC unless configured.
        Refuses a second schedule with the same name, so re-running a deploy script is safe.

        KFP caches tasks by their inputs, and a schedule passes the same dataset_uri every time: so
        medsynth-train's prepare task is never taken from KFP's cache; it keys its data set on the
        source's content itself, and a run sees the frames the source holds when it runs.
        `enable_caching=False` turns KFP's cache off for every task."""
        kfp_cron = to_kfp_cron(cron)
        check_pipeline_root(pipeline_root)
        if max_concurrency < 1:
            raise ConfigError(f"--max-concurrency {max_concurrency}: must be at least 1")
        path = Path(package)
        spec = load_package(path)
        values = coerce_params(params or {}, pipeline_parameters(spec))
        self.require_version()
        existing = self._schedules_named(name)
        if existing:
            raise ConfigError(
                f"a recurring run called {name!r} exists (id {existing[0].recurring_run_id}): "
                f"delete it first (medsynth schedule --delete {name}) or choose another --name"
            )
        exp = self.experiment_id(experiment, create=True)
        with self._api("creating the recurring run"):
            rr = self.kfp.create_recurring_run(
                experiment_id=exp,
                job_name=name,
                description=f"{spec['pipelineInfo']['name']} on cron {cron.strip()!r}",
                cron_expression=kfp_cron,
                max_concurrency=max_concurrency,
                no_catchup=not catchup,
                params=values,
                pipeline_package_path=str(path),
                enabled=enabled,
                pipeline_root=pipeline_root,
                enable_caching=enable_caching,
                service_account=service_account,
            )
        return self._schedule_info(rr)

    def list_schedules(self, *, experiment: str | None = None) -> list[ScheduleInfo]:
        exp = self.experiment_id(experiment, create=False) if experiment else None
        out: list[ScheduleInfo] = []
        token = ""
        with self._api("listing recurring runs"):
            while True:
                page = self.kfp.list_recurring_runs(
                    page_token=token, page_size=100, sort_by="created_at desc",
                    experiment_id=exp, namespace=self.namespace,
                )
                out += [self._schedule_info(r) for r in page.recurring_runs or []]
                token = page.next_page_token or ""
                if not token:
                    return out

    def find_schedule(self, name_or_id: str) -> ScheduleInfo:
        """A recurring run by display name (must be unique) or by id."""
        named = self._schedules_named(name_or_id)
        if len(named) > 1:
            ids = ", ".join(s.recurring_run_id for s in named)
            raise KfpError(f"several recurring runs are called {name_or_id!r} ({ids}): pass the id")
        if named:
            return named[0]
        try:
            with self._api(f"reading recurring run {name_or_id}"):
                return self._schedule_info(self.kfp.get_recurring_run(name_or_id))
        except KfpError as e:
            if e.status in (400, 404):
                raise KfpError(f"no recurring run called or with id {name_or_id!r} on "
                               f"{redact_url(self.host)}") from None
            raise

    def set_schedule_enabled(self, name_or_id: str, enabled: bool) -> ScheduleInfo:
        found = self.find_schedule(name_or_id)
        rid = found.recurring_run_id
        with self._api(f"{'enabling' if enabled else 'disabling'} recurring run {rid}"):
            if enabled:
                self.kfp.enable_recurring_run(rid)
            else:
                self.kfp.disable_recurring_run(rid)
            return self._schedule_info(self.kfp.get_recurring_run(rid))

    def delete_schedule(self, name_or_id: str) -> ScheduleInfo:
        found = self.find_schedule(name_or_id)
        with self._api(f"deleting recurring run {found.recurring_run_id}"):
            self.kfp.delete_recurring_run(found.recurring_run_id)
        return found

    def _schedules_named(self, name: str) -> list[ScheduleInfo]:
        with self._api(f"looking up recurring run {name!r}"):
            page = self.kfp.list_recurring_runs(filter=_name_filter(name), namespace=self.namespace,
                                                page_size=10)
        return [self._schedule_info(r) for r in page.recurring_runs or [] if r.display_name == name]

    # - conversions -
    def _run_info(self, run: Any) -> RunInfo:
        details = getattr(run, "run_details", None)
        tasks = tuple(
            (t.display_name or t.task_id or "?", str(t.state or ""))
            for t in (getattr(details, "task_details", None) or [])
        )
        err = getattr(run, "error", None)
        message = getattr(err, "message", None) if err is not None else None
        return RunInfo(
            run_id=run.run_id,
            name=run.display_name or run.run_id,
            state=str(run.state or "PENDING"),
            url=f"{self.ui}/#/runs/details/{run.run_id}",
            created_at=_time(run.created_at),
            finished_at=_time(run.finished_at),
            error=one_line(self._scrub(message)) if message else None,
            experiment_id=run.experiment_id,
            tasks=tasks,
        )

    def _schedule_info(self, rr: Any) -> ScheduleInfo:
        trigger = getattr(rr, "trigger", None)
        cron = getattr(getattr(trigger, "cron_schedule", None), "cron", None)
        mode = str(rr.mode or "")
        status = str(rr.status or "")
        enabled = mode == "ENABLE" if mode in ("ENABLE", "DISABLE") else status == "ENABLED"
        runtime = getattr(rr, "runtime_config", None)
        return ScheduleInfo(
            recurring_run_id=rr.recurring_run_id,
            name=rr.display_name or rr.recurring_run_id,
            cron=cron,
            enabled=enabled,
            url=f"{self.ui}/#/recurringrun/details/{rr.recurring_run_id}",
            experiment_id=rr.experiment_id,
            created_at=_time(rr.created_at),
            max_concurrency=int(rr.max_concurrency) if rr.max_concurrency is not None else None,
            parameters=dict(getattr(runtime, "parameters", None) or {}),
        )


def parse_kfp_version(tag: str | None) -> tuple[int, int, int] | None:
    """`2.4.0`, `v2.5.0-rc.1` → (2, 4, 0), (2, 5, 0); None for `unknown`, `master` or nothing."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", (tag or "").strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


def _count_tasks(pipeline_spec: Any) -> int | None:
    spec = pipeline_spec or {}
    if isinstance(spec, dict) and "pipeline_spec" in spec:
        spec = spec["pipeline_spec"]
    try:
        return len(spec["root"]["dag"]["tasks"]) or None
    except (KeyError, TypeError):
        return None


def check_pipeline_root(pipeline_root: str | None) -> None:
    """A KFP pipeline root is an object-store URI; checked before anything is compiled or sent."""
    if pipeline_root is not None and not re.match(r"[a-z][a-z0-9+.-]*://\S+", pipeline_root):
        raise ConfigError(
            f"--pipeline-root {pipeline_root!r}: give an object-store URI, e.g. gs://BUCKET/pipeline-root"
        )


def _name_filter(name: str) -> str:
    # the form kfp.Client itself sends (filter.proto as JSON)
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "stringValue": name}]})


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return None if value <= _EPOCH else value  # KFP reports unfinished runs as finished at the epoch


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
