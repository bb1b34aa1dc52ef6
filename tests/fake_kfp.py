"""A local stand-in for the few Kubeflow Pipelines v2beta1 REST endpoints medsynth calls.

It is a contract fake, not a KFP: it records every request for the tests to
assert on, keeps experiments, runs and recurring runs in memory, and checks
what a real API server would reject (parameters that the pipeline spec does
not declare or that have the wrong JSON type, cron without KFP's seconds
field). Faults are injected per request (`fail`, `hang`); a run's states are
scripted (`script_run`).

Endpoints (all under /apis/v2beta1):
  GET  /healthz
  GET  /experiments            POST /experiments            GET /experiments/{id}
  GET  /runs                   POST /runs                   GET /runs/{id}
  GET  /recurringruns          POST /recurringruns          GET|DELETE /recurringruns/{id}
  POST /recurringruns/{id}:enable                           POST /recurringruns/{id}:disable
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from http_fake import FakeServer, send_json

API = "/apis/v2beta1"
_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "STRING": lambda v: isinstance(v, str),
    "NUMBER_INTEGER": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "NUMBER_DOUBLE": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None

    @property
    def filter(self) -> dict | None:
        return json.loads(self.query["filter"]) if self.query.get("filter") else None


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern
    status: int
    body: Any
    hang: float
    times: int


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class FakeKfp:
    multi_user: bool = False
    # The release healthz reports: the API server answers tag_name, the KFP UI's proxy apiServerTagName.
    version: str = "2.5.0"
    behind_ui: bool = False
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._faults: list[_Fault] = []
        self._scripts: dict[str, list[str]] = {}
        self._default_script: list[str] = ["PENDING", "RUNNING", "SUCCEEDED"]
        self._clock = 1_800_000_000
        self._lock = threading.Lock()
        self._server: FakeServer | None = None

    # - lifecycle -
    def start(self) -> FakeKfp:
        self._server = FakeServer(self._dispatch).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return self._server.url

    # - test controls -
    def fail(self, method: str, path: str, status: int, body: Any = None, times: int = 1) -> None:
        """The next `times` requests matching METHOD and the path regex get `status` with `body`."""
        self._faults.append(_Fault(method, re.compile(path), status, body, 0.0, times))

    def hang(self, method: str, path: str, seconds: float, times: int = 100) -> None:
        """Matching requests get no answer for `seconds` (then a 200 nobody waits for)."""
        self._faults.append(_Fault(method, re.compile(path), 0, None, seconds, times))

    def script_run(self, states: list[str], run_id: str | None = None) -> None:
        """States that successive GETs of a run return (the last one sticks); for every run
        created afterwards when `run_id` is None."""
        if run_id is None:
            self._default_script = list(states)
        else:
            self._scripts[run_id] = list(states)

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        return [r for r in self.requests
                if (method is None or r.method == method) and (path is None or re.fullmatch(path, r.path))]

    # - HTTP -
    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("latin-1")
        req = Request(h.command, url.path, dict(parse_qsl(url.query, keep_blank_values=True)),
                      {k.lower(): v for k, v in h.headers.items()}, body)
        with self._lock:
            self.requests.append(req)
            fault = next((f for f in self._faults
                          if f.times > 0 and f.method == req.method and f.pattern.fullmatch(req.path)), None)
            if fault:
                fault.times -= 1
        if fault and fault.hang:
            time.sleep(fault.hang)
            return self._send(h, 200, {})
        if fault:
            return self._send(h, fault.status, fault.body)
        try:
            with self._lock:
                status, payload = self._route(req)
        except ApiError as e:
            status = e.status  # grpc-gateway's error body
            payload = {"error": e.message, "code": _grpc_code(e.status), "message": e.message, "details": []}
        self._send(h, status, payload)

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        send_json(h, status, payload if payload is not None else {})

    def _route(self, r: Request) -> tuple[int, Any]:
        p = r.path
        if not p.startswith(API):
            raise ApiError(404, f"Not Found: {p}")
        p = p[len(API):]
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", r"/healthz", self._healthz),
            ("GET", r"/experiments", lambda: self._list("experiments", self.experiments, r)),
            ("POST", r"/experiments", lambda: self._create_experiment(r)),
            ("GET", r"/experiments/([^/:]+)", lambda i: self._get(self.experiments, i, "experiment")),
            ("GET", r"/runs", lambda: self._list("runs", self.runs, r)),
            ("POST", r"/runs", lambda: self._create_run(r)),
            ("GET", r"/runs/([^/:]+)", self._get_run),
            ("GET", r"/recurringruns", lambda: self._list("recurringRuns", self.recurring_runs, r)),
            ("POST", r"/recurringruns", lambda: self._create_recurring(r)),
            ("GET", r"/recurringruns/([^/:]+)", lambda i: self._get(self.recurring_runs, i, "recurring run")),
            ("DELETE", r"/recurringruns/([^/:]+)", self._delete_recurring),
            ("POST", r"/recurringruns/([^/:]+):enable", lambda i: self._set_mode(i, True)),
            ("POST", r"/recurringruns/([^/:]+):disable", lambda i: self._set_mode(i, False)),
        ]
        for method, pattern, fn in routes:
            m = re.fullmatch(pattern, p)
            if m and method == r.method:
                return 200, fn(*m.groups())
        raise ApiError(404, f"Not Found: {r.method} {r.path}")

    # - resources -
    def _healthz(self) -> dict:
        if self.behind_ui:
            return {"apiServerTagName": self.version, "apiServerMultiUser": self.multi_user,
                    "multi_user": self.multi_user, "apiServerReady": True}
        return {"commit_sha": "0" * 40, "tag_name": self.version, "multi_user": self.multi_user,
                "pipeline_store": "database"}

    def _now(self) -> str:
        self._clock += 1
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock))

    def _get(self, table: dict[str, dict], key: str, what: str) -> dict:
        if key not in table:
            raise ApiError(404, f"{what} {key} not found")
        return table[key]

    def _list(self, key: str, table: dict[str, dict], r: Request) -> dict:
        items = list(table.values())
        flt = r.filter
        for pred in (flt or {}).get("predicates", []):
            if pred.get("operation") not in ("EQUALS", 1) or pred.get("key") != "display_name":
                raise ApiError(400, f"fake supports only display_name EQUALS filters, got {pred}")
            want = pred.get("stringValue", pred.get("string_value"))
            items = [i for i in items if i.get("display_name") == want]
        if r.query.get("experiment_id"):
            items = [i for i in items if i.get("experiment_id") == r.query["experiment_id"]]
        if r.query.get("namespace"):
            items = [i for i in items if i.get("namespace", r.query["namespace"]) == r.query["namespace"]]
        sort = r.query.get("sort_by", "")
        if sort:
            name, _, order = sort.partition(" ")
            items.sort(key=lambda i: i.get(name, ""), reverse=order == "desc")
        start = int(r.query.get("page_token") or 0)
        size = int(r.query.get("page_size") or 10)
        page = items[start:start + size]
        out: dict[str, Any] = {"total_size": len(items)}
        if page:  # like the real gateway: an empty list is left out
            out[key] = page
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def _create_experiment(self, r: Request) -> dict:
        name = (r.body or {}).get("display_name")
        if not name:
            raise ApiError(400, "experiment display_name is empty")
        if any(e["display_name"] == name for e in self.experiments.values()):
            raise ApiError(409, f"experiment {name} already exists")
        exp = {"experiment_id": str(uuid.uuid4()), "display_name": name, "created_at": self._now(),
               "storage_state": "AVAILABLE", "namespace": (r.body or {}).get("namespace") or ""}
        self.experiments[exp["experiment_id"]] = exp
        return exp

    def _check_job(self, body: dict) -> None:
        if (body.get("experiment_id") or "") not in self.experiments:
            raise ApiError(404, f"experiment {body.get('experiment_id')} not found")
        spec = body.get("pipeline_spec")
        if not spec and not body.get("pipeline_version_reference"):
            raise ApiError(400, "a run needs pipeline_spec or pipeline_version_reference")
        if isinstance(spec, dict) and "pipeline_spec" in spec:
            spec = spec["pipeline_spec"]
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        for name, value in (body.get("runtime_config") or {}).get("parameters", {}).items():
            if name not in declared:
                raise ApiError(400, f"parameter {name} is not declared by the pipeline")
            kind = declared[name]["parameterType"]
            if not _JSON_TYPES[kind](value):
                raise ApiError(400, f"parameter {name}: {value!r} is not {kind}")

    def _create_run(self, r: Request) -> dict:
        body = dict(r.body or {})
        self._check_job(body)
        run_id = str(uuid.uuid4())
        run = {**body, "run_id": run_id, "state": "PENDING", "created_at": self._now(),
               "finished_at": "1970-01-01T00:00:00Z", "storage_state": "AVAILABLE"}
        self.runs[run_id] = run
        self._scripts.setdefault(run_id, list(self._default_script))
        return run

    def _get_run(self, run_id: str) -> dict:
        run = self._get(self.runs, run_id, "run")
        script = self._scripts.get(run_id) or [run["state"]]
        state = script.pop(0) if len(script) > 1 else script[0]
        run["state"] = state
        spec = run.get("pipeline_spec") or {}
        spec = spec.get("pipeline_spec", spec)
        names = list(spec.get("root", {}).get("dag", {}).get("tasks", {}))
        done = {"PENDING": 0, "RUNNING": len(names) // 2}.get(state, len(names))
        tasks = [{"task_id": f"t{i}", "display_name": n,
                  "state": ("SUCCEEDED" if i < done else "RUNNING" if state == "RUNNING" else "PENDING")}
                 for i, n in enumerate(names)]
        if state == "FAILED" and tasks:
            tasks[-1]["state"] = "FAILED"
            run["error"] = {"code": 2, "message": f"task {names[-1]} failed: OOMKilled (exit code 137)"}
        if state in ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED") and run["finished_at"].startswith("1970"):
            run["finished_at"] = self._now()
        run["run_details"] = {"task_details": tasks}
        return run

    def _create_recurring(self, r: Request) -> dict:
        body = dict(r.body or {})
        self._check_job(body)
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
        if not cron.startswith("@") and len(cron.split()) != 6:
            raise ApiError(400, f"invalid cron {cron!r}: KFP expects 6 fields (seconds first)")
        rid = str(uuid.uuid4())
        mode = body.get("mode", "ENABLE")
        rr = {**body, "recurring_run_id": rid, "created_at": self._now(), "updated_at": self._now(),
              "status": "ENABLED" if mode == "ENABLE" else "DISABLED",
              "max_concurrency": str(body.get("max_concurrency", 1))}  # int64 → string in proto JSON
        self.recurring_runs[rid] = rr
        return rr

    def _set_mode(self, rid: str, enabled: bool) -> dict:
        rr = self._get(self.recurring_runs, rid, "recurring run")
        rr["mode"], rr["status"] = ("ENABLE", "ENABLED") if enabled else ("DISABLE", "DISABLED")
        rr["updated_at"] = self._now()
        return {}

    def _delete_recurring(self, rid: str) -> dict:
        self._get(self.recurring_runs, rid, "recurring run")
        del self.recurring_runs[rid]
        return {}


def _grpc_code(status: int) -> int:
    return {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 503: 14}.get(status, 2)
