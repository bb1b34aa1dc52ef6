"""Submit, schedule and list medsynth-train runs on a Kubeflow Pipelines host.

The Python API behind `medsynth submit|schedule|runs`, for users who trigger
retraining from their own code (e.g. when new data lands in the bucket):

    from medsynth.kfp_client import PipelineClient

    kfp = PipelineClient("https://kubeflow.example.com/pipeline", token=access_token)
    run = kfp.submit({"dataset_uri": "gs://bucket/angio/2026-11", "train_steps": 40000})
    final = kfp.wait(run.run_id, timeout=6 * 3600)

It wraps `kfp.Client` (kfp 2.13) and adds what the CLI needs: parameters
typed and checked against the pipeline's own input definitions before
anything is sent, standard 5-field cron converted to KFP's 6-field form,
per-request timeouts (kfp.Client has none and can hang), one health check
instead of five with 5 s sleeps, and every failure turned into one
`MedsynthError` line that never contains the token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import functools
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from medsynth.errors import ConfigError, MedsynthError

DEFAULT_EXPERIMENT = "medsynth"
DEFAULT_SCHEDULE_NAME = "medsynth-retrain"
# What the CLI reads as defaults of --host, --namespace and --token-file, and the token itself
# (kfp.Client reads only KF_PIPELINES_ENDPOINT of these, and only when given no host).
ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
NAMESPACE_ENV = "KF_PIPELINES_NAMESPACE"
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp's own: where run links point when the UI is elsewhere
TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
# The oldest backend medsynth-train runs correctly on: from 2.4 the driver substitutes the run-id
# placeholder and honours the final task's GPU count given as a pipeline parameter (resourceCount);
# older ones share one run directory between runs and give the final training no GPU.
MIN_KFP_VERSION = (2, 4)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class KfpError(MedsynthError):
    """The Kubeflow Pipelines host cannot be reached or refused a request."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status KFP answered, None when it was not reached

    @property
    def transient(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


# --- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One run-time parameter of a compiled pipeline (root inputDefinitions)."""

    name: str
    type: str  # KFP ParameterType: STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    default: Any = None
    optional: bool = True


_TYPE_WORDS = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


def parse_param_args(items: Sequence[str]) -> dict[str, str]:
    """`["image_size=128", "dataset_uri=gs://b/x?a=b"]` → dict; splits at the first `=`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--param {item!r} is malformed: write KEY=VALUE, e.g. --param image_size=128")
        if key in out:
            raise ConfigError(f"--param {key} is given twice ({out[key]!r} and {value!r}): keep one")
        out[key] = value
    return out


def load_package(package: str | Path) -> dict:
    """The PipelineSpec of a compiled package (.yaml/.yml; the first YAML document)."""
    import yaml

    path = Path(package)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--package {path}: expected a compiled pipeline .yaml (from `medsynth compile`)")
    try:
        with path.open() as f:
            spec = next(iter(yaml.safe_load_all(f)), None)
    except OSError as e:
        raise ConfigError(f"--package {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--package {path}: not valid YAML ({_one_line(str(e))[:200]})") from None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise ConfigError(f"--package {path}: not a compiled KFP pipeline (no pipelineInfo/root)")
    return spec


def pipeline_parameters(spec: Mapping) -> dict[str, ParamSpec]:
    """The run-time parameters a compiled pipeline declares, with their KFP types and defaults."""
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {
        name: ParamSpec(
            name=name,
            type=p.get("parameterType", "STRING"),
            default=p.get("defaultValue"),
            optional=bool(p.get("isOptional", "defaultValue" in p)),
        )
        for name, p in params.items()
    }


def coerce_params(values: Mapping[str, Any], specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Check names and convert values (strings from the command line, or Python values) to the
    pipeline's types, so a typo or a wrong type fails here, not minutes later on the cluster."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown pipeline parameter {name!r}{hint}; valid: {', '.join(sorted(specs))}"
            )
        out[name] = _coerce(spec, value)
    missing = [s.name for s in specs.values() if not s.optional and s.name not in out]
    if missing:
        raise ConfigError(f"the pipeline needs these parameters: {', '.join(sorted(missing))} "
                          "(pass --param NAME=VALUE)")
    return out


def _coerce(spec: ParamSpec, value: Any) -> Any:
    bad = ConfigError(f"parameter {spec.name}={value!r}: must be {_TYPE_WORDS.get(spec.type, spec.type)}")
    t = spec.type
    if isinstance(value, str) and t not in ("STRING",):
        text = value.strip()
        if t == "NUMBER_INTEGER":
            if not re.fullmatch(r"[+-]?\d+", text):
                raise bad
            return int(text)
        if t == "NUMBER_DOUBLE":
            try:
                number = float(text)
            except ValueError:
                raise bad from None
            if number != number or number in (float("inf"), float("-inf")):
                raise bad
            return number
        if t == "BOOLEAN":
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise bad
        if t in ("LIST", "STRUCT"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise bad from None
    if t == "STRING":
        if not isinstance(value, str):
            raise bad
        return value
    if t == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if t == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if t == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad
        return value
    if t == "LIST" and not isinstance(value, list):
        raise bad
    if t == "STRUCT" and not isinstance(value, dict):
        raise bad
    return value


# --- cron ---------------------------------------------------------------------------------------
# KFP parses schedules with robfig/cron v1: six fields, seconds first, and a standard 5-field
# expression is silently read as "second minute hour day month" (`0 3 * * 1` would run every
# hour of January). So 5 fields get a leading "0"; 6 fields are taken as KFP's form.
_CRON_FIELDS = [  # name, low, high, names
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ("day of week", 0, 6, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
]
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def to_kfp_cron(expr: str) -> str:
    """Standard cron (5 fields) → KFP's 6-field cron with seconds; 6 fields and @daily-style
    descriptors pass through after validation. Raises ConfigError naming the bad field."""
    text = " ".join(expr.split())
    low = text.lower()
    if low in _DESCRIPTORS:
        return low
    if low.startswith("@every"):
        if re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", low):
            return low
        raise ConfigError(f"--cron {expr!r}: write @every with a Go duration, e.g. '@every 6h'")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(
            f"--cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week, e.g. "
            f"'0 3 * * 1' = Mondays 03:00) or KFP's 6 with seconds first; got {len(fields)}"
        )
    for value, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expr, value, name, lo, hi, names)
    return " ".join(fields)


def _check_cron_field(expr: str, value: str, name: str, lo: int, hi: int, names: list[str] | None) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"--cron {expr!r}: {name} field {value!r} {why}")

    def number(tok: str) -> int:
        if names and tok.upper() in names:
            return names.index(tok.upper()) + lo
        if not tok.isdigit():
            raise bad(f"has {tok!r}; allowed: {lo}-{hi}" + (f" or {names[0]}-{names[-1]}" if names else ""))
        n = int(tok)
        if name == "day of week" and n == 7:
            raise bad("uses 7 for Sunday; KFP's cron counts days of week 0-6: use 0 or SUN")
        if not lo <= n <= hi:
            raise bad(f"is out of range {lo}-{hi}")
        return n

    if value == "?" and name in ("day of month", "day of week"):
        return
    for part in value.split(","):
        rng, _, step = part.partition("/")
        if _ and (not step.isdigit() or int(step) == 0):
            raise bad("has a step that is not a positive integer")
        if rng == "*":
            continue
        a, dash, b = rng.partition("-")
        start = number(a)
        if dash and number(b) < start:
            raise bad(f"has a backwards range {rng!r}")


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    """A pipeline run as the CLI and callers need it."""

    run_id: str
    name: str
    state: str
    url: str
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = None
    experiment_id: str | None = None
    tasks: tuple[tuple[str, str], ...] = ()  # (task name, state), as KFP reports them

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring run (KFP's name for a schedule)."""

    recurring_run_id: str
    name: str
    cron: str | None
    enabled: bool
    url: str
    experiment_id: str | None = None
    created_at: dt.datetime | None = None
    max_concurrency: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


# --- the client ---------------------------------------------------------------------------------
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
        return f"PipelineClient(host={_redact_url(self.host)!r}, namespace={self.namespace!r})"

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
            client = _timeout_client_class()(
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
                f"{_redact_url(self.host)} is a multi-user Kubeflow: pass --namespace (your profile "
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
            with _quiet():
                yield
        except MedsynthError:
            raise
        except Exception as e:  # translated into one line, never swallowed
            status = getattr(e, "status", None) or None
            raise KfpError(self._scrub(_describe(e, self.host, doing, self._timeout)),
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
                _redact_url(self.host), self.version, floor,
            )
        elif release[:2] < MIN_KFP_VERSION:
            raise KfpError(
                f"KFP at {_redact_url(self.host)} is {self.version}; medsynth-train needs Kubeflow Pipelines "
                f">= {floor} (older backends leave the run id unsubstituted, so runs share and resume one "
                "directory, and give the final training no GPU): upgrade the backend"
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
            raise KfpError(f"no experiment called {name!r} on {_redact_url(self.host)}")
        return found[0].experiment_id

    # - runs -
    def submit(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        pipeline_root: str | None = None,
        package: str | Path | None = None,
        backbones: Sequence[str] | None = None,
        service_account: str | None = None,
        enable_caching: bool | None = None,
    ) -> RunInfo:
        """Create one run of the pipeline (the package, or medsynth-train compiled from this code)."""
        _check_pipeline_root(pipeline_root)
        with _package(package, backbones) as (path, spec):
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
        package: str | Path | None = None,
        backbones: Sequence[str] | None = None,
        service_account: str | None = None,
        max_concurrency: int = 1,
        catchup: bool = False,
        enabled: bool = True,
        enable_caching: bool | None = None,
    ) -> ScheduleInfo:
        """Create a recurring run (retraining on a schedule). `cron` is standard 5-field cron (or
        KFP's 6-field form); times are in the KFP scheduler's time zone, UTC unless configured.
        Refuses a second schedule with the same name, so re-running a deploy script is safe.

        KFP caches tasks by their inputs: a schedule that always passes the same dataset_uri reuses
        the first run's prepared data set. Point dataset_uri at new data, or pass
        `enable_caching=False` (every task runs)."""
        kfp_cron = to_kfp_cron(cron)
        _check_pipeline_root(pipeline_root)
        if max_concurrency < 1:
            raise ConfigError(f"--max-concurrency {max_concurrency}: must be at least 1")
        with _package(package, backbones) as (path, spec):
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
                               f"{_redact_url(self.host)}") from None
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
            error=_one_line(self._scrub(message)) if message else None,
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


@functools.cache
def _timeout_client_class() -> type:
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


# --- helpers ------------------------------------------------------------------------------------
def parse_kfp_version(tag: str | None) -> tuple[int, int, int] | None:
    """`2.4.0`, `v2.5.0-rc.1` → (2, 4, 0), (2, 5, 0); None for `unknown`, `master` or nothing."""
    m = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", (tag or "").strip())
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)) if m else None


@contextlib.contextmanager
def _package(package: str | Path | None, backbones: Sequence[str] | None) -> Iterator[tuple[Path, dict]]:
    """The package to send and its spec: the given file, or medsynth-train compiled from this code."""
    if package is not None:
        if backbones:
            raise ConfigError("--backbones applies when compiling; with --package the backbones are fixed")
        path = Path(package)
        yield path, load_package(path)
        return
    print("compiling medsynth-train from this code …", file=sys.stderr, flush=True)
    from pipelines.medsynth_train import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="medsynth-kfp-") as tmp:
        path = compile_pipeline(Path(tmp) / "pipeline.yaml", backbones=backbones)
        yield path, load_package(path)


def _count_tasks(pipeline_spec: Any) -> int | None:
    spec = pipeline_spec or {}
    if isinstance(spec, dict) and "pipeline_spec" in spec:
        spec = spec["pipeline_spec"]
    try:
        return len(spec["root"]["dag"]["tasks"]) or None
    except (KeyError, TypeError):
        return None


def _check_pipeline_root(pipeline_root: str | None) -> None:
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def _describe(e: BaseException, host: str, doing: str, timeout: float) -> str:
    """One line for any failure talking to KFP: what we were doing, where, and why."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    where = _redact_url(host)
    if isinstance(e, ApiException):
        if not e.status:
            return f"cannot reach KFP at {where} while {doing}: {_one_line(e.reason or e)}"
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
        return f"{prefix}: TLS failed ({_one_line(str(reason))[:200]})"
    if isinstance(reason, urllib3.exceptions.ProtocolError | urllib3.exceptions.HTTPError):
        return f"{prefix}: connection broken ({_one_line(str(reason))[:200]})"
    if isinstance(e, ValueError):
        return f"KFP client refused while {doing}: {_one_line(str(e))[:300]}"
    if isinstance(e, OSError):
        return f"{doing}: {e.strerror or e} ({getattr(e, 'filename', '') or type(e).__name__})"
    return f"{doing} on {where} failed: {type(e).__name__}: {_one_line(str(e))[:300]}"


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
        return _one_line(body)[:300]
    if isinstance(data, dict):
        msg = data.get("message") or data.get("error") or ""
        return _one_line(msg)[:300] if msg else _one_line(json.dumps(data))[:300]
    return _one_line(str(data))[:300]


# --- tables -------------------------------------------------------------------------------------
def runs_table(runs: Sequence[RunInfo]) -> str:
    rows = [("RUN ID", "NAME", "STATE", "CREATED (UTC)", "DURATION")]
    now = _now()
    for r in runs:
        end = r.finished_at or (None if r.done else now)
        took = _duration((end - r.created_at).total_seconds()) if r.created_at and end else "-"
        rows.append((r.run_id, r.name, r.state, _fmt_time(r.created_at), took))
    return _table(rows)


def schedules_table(schedules: Sequence[ScheduleInfo]) -> str:
    rows = [("RECURRING RUN ID", "NAME", "CRON (KFP, with seconds)", "ENABLED", "CREATED (UTC)")]
    for s in schedules:
        rows.append((s.recurring_run_id, s.name, s.cron or "-", "yes" if s.enabled else "no",
                     _fmt_time(s.created_at)))
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def _fmt_time(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if t else "-"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
