"""`medsynth submit|schedule|runs` and `medsynth.kfp_client` against a fake KFP v2beta1 API.

A contract test: tests/fake_kfp.py implements the few REST endpoints kfp.Client
calls and records the requests; these tests assert on what is sent (the
compiled medsynth-train spec, typed parameters, KFP's 6-field cron, enable/
disable/delete) and on the one-line errors. No real KFP backend runs here.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
import yaml
from fake_kfp import FakeKfp

from medsynth.cli import main
from medsynth.errors import ConfigError
from medsynth.kfp_client import (
    KfpError,
    PipelineClient,
    coerce_params,
    load_package,
    pipeline_parameters,
    to_kfp_cron,
)

BACKBONES = ["mobilenetv2", "resnet50"]
TOKEN = "tok-3f9a-not-a-real-secret"
RUNS = "/apis/v2beta1/runs"
RECURRING = "/apis/v2beta1/recurringruns"
EXPERIMENTS = "/apis/v2beta1/experiments"


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ~/.config/kfp/context.json and no KFP variables from the machine running the tests."""
    from kfp.client import client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for var in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_NAMESPACE", "KF_PIPELINES_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake():
    server = FakeKfp().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """medsynth-train compiled from this code, with two backbones (compiled once per session)."""
    from pipelines.medsynth_train import compile_pipeline

    return compile_pipeline(tmp_path_factory.mktemp("pkg") / "medsynth_train.yaml", backbones=BACKBONES)


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def sent_spec(body: dict) -> dict:
    """The PipelineSpec in a run/recurring-run body (kfp nests it beside a platform_spec when the
    package has one, e.g. from kfp-kubernetes settings)."""
    spec = body["pipeline_spec"]
    return spec["pipeline_spec"] if "platform_spec" in spec else spec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- submit -------------------------------------------------------------------------------------
def test_submit_sends_the_compiled_pipeline_with_typed_parameters(fake, package, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    rc, out, err = run_cli(
        capsys, "submit", "--host", fake.endpoint, "--package", str(package), "--experiment", "retrain",
        "--param", "image_size=128", "--param", "gate_margin=0.5", "--param", "dataset_uri=gs://b/new?v=2",
        "--pipeline-root", "gs://bucket/root", "--run-name", "nightly",
    )
    assert rc == 0, err
    (post,) = fake.calls("POST", RUNS)
    body = post.body
    spec = sent_spec(body)
    compiled = list(yaml.safe_load_all(package.read_text()))
    assert spec == compiled[0]  # exactly what was compiled, not a stale or hand-written spec
    if len(compiled) > 1:
        assert body["pipeline_spec"]["platform_spec"] == compiled[1]
    assert spec["pipelineInfo"]["name"] == "medsynth-train"
    tasks = set(spec["root"]["dag"]["tasks"])
    assert {"prepare", "compare", "export", "push"} <= tasks
    assert len([t for t in tasks if t.startswith("train")]) == len(BACKBONES) + 1
    params = body["runtime_config"]["parameters"]
    assert params == {"image_size": 128, "gate_margin": 0.5, "dataset_uri": "gs://b/new?v=2"}
    assert type(params["image_size"]) is int and type(params["gate_margin"]) is float
    assert body["runtime_config"]["pipeline_root"] == "gs://bucket/root"
    assert body["display_name"] == "nightly"

    # the experiment was looked up by name, then created, and the run filed under it
    (lookup,) = fake.calls("GET", EXPERIMENTS)
    assert lookup.filter["predicates"][0]["stringValue"] == "retrain"
    (created,) = fake.calls("POST", EXPERIMENTS)
    assert created.body["display_name"] == "retrain"
    assert body["experiment_id"] == next(iter(fake.experiments))

    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.requests)
    run_id = next(iter(fake.runs))
    assert run_id in out and f"{fake.endpoint}/#/runs/details/{run_id}" in out
    assert TOKEN not in out + err


@pytest.mark.parametrize("version", ["2.4.1", "2.4.0", "2.3.0", "1.8.5", "v2.4.1-rc.0"])
@pytest.mark.parametrize("command", ["submit", "schedule"])
def test_a_backend_before_2_5_is_refused_before_anything_is_created(fake, package, capsys, version, command):
    fake.version = version
    extra = ["--cron", "0 3 * * 1"] if command == "schedule" else []
    rc, out, err = run_cli(capsys, command, "--host", fake.endpoint, "--package", str(package), *extra)
    assert rc == 2
    line = one_error_line(err)
    assert f"KFP at {fake.endpoint} is {version}" in line and ">= 2.5" in line
    assert not fake.calls("POST")  # no experiment, run or recurring run


@pytest.mark.parametrize("version,behind_ui", [("2.5.0", False), ("v2.5.0-rc.1", False), ("2.14.3", True)])
def test_a_backend_from_2_5_on_is_accepted_directly_or_via_ui(fake, package, capsys, version, behind_ui):
    fake.version, fake.behind_ui = version, behind_ui
    rc, out, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package))
    assert rc == 0, err
    assert len(fake.calls("POST", RUNS)) == 1


def test_a_backend_without_a_release_is_warned_about(fake, package, capsys, caplog):
    fake.version = "unknown"  # a development build of the API server
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        rc, out, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package))
    assert rc == 0, err
    assert "cannot check it is >= 2.5" in caplog.text


def test_submit_reuses_an_existing_experiment(fake, package, capsys):
    client = PipelineClient(fake.endpoint)
    exp_id = client.experiment_id("medsynth", create=True)
    fake.requests.clear()
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package))
    assert rc == 0, err
    assert fake.calls("POST", EXPERIMENTS) == []
    assert fake.calls("POST", RUNS)[0].body["experiment_id"] == exp_id
    assert fake.calls("POST", RUNS)[0].body["runtime_config"].get("parameters", {}) == {}


def test_submit_compiles_the_current_code_by_default(fake, capsys):
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--backbones", "mobilenetv2",
                         "--param", "train_steps=7")
    assert rc == 0, err
    body = fake.calls("POST", RUNS)[0].body
    assert sent_spec(body)["pipelineInfo"]["name"] == "medsynth-train"
    assert len([t for t in sent_spec(body)["root"]["dag"]["tasks"] if t.startswith("train")]) == 2
    assert body["runtime_config"]["parameters"] == {"train_steps": 7}


def test_submit_wait_follows_the_run_and_exits_by_its_outcome(fake, package, capsys):
    fake.script_run(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    rc, out, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package),
                           "--wait", "--poll", "0.01")
    assert rc == 0, err
    assert "SUCCEEDED" in out
    assert len(fake.calls("GET", RUNS + "/[^/]+")) == 4
    n_tasks = len(load_package(package)["root"]["dag"]["tasks"])
    assert f"{n_tasks}/{n_tasks}" in err  # the progress line counted the DAG's tasks to the end

    fake.script_run(["RUNNING", "FAILED"])
    rc, out, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package),
                           "--wait", "--poll", "0.01")
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "FAILED" in last and "OOMKilled" in last


def test_submit_wait_gives_up_after_timeout(fake, package, capsys):
    fake.script_run(["RUNNING"])
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package),
                         "--wait", "--poll", "0.01", "--timeout", "0.05")
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert "still RUNNING after 0.05 s" in last and "keeps running" in last


def test_wait_rides_out_transient_api_errors_but_not_others(fake, package):
    client = PipelineClient(fake.endpoint, retries=0)
    run = client.submit(package=package)
    fake.script_run(["RUNNING", "SUCCEEDED"], run_id=run.run_id)
    fake.fail("GET", f"{RUNS}/{run.run_id}", 500, {"message": "database is restarting"}, times=2)
    final = client.wait(run.run_id, poll=0.01)
    assert final.succeeded
    assert len(fake.calls("GET", f"{RUNS}/{run.run_id}")) == 4  # 2 failures, RUNNING, SUCCEEDED

    fake.fail("GET", f"{RUNS}/{run.run_id}", 403, {"message": "not allowed"})
    with pytest.raises(KfpError, match="HTTP 403"):
        client.wait(run.run_id, poll=0.01)


# --- parameters ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("param", "expect"),
    [
        ("imagesize=128", ["unknown pipeline parameter 'imagesize'", "did you mean image_size",
                           "valid: backbone_weights, batch_size,"]),
        ("image_size", ["--param 'image_size' is malformed", "KEY=VALUE"]),
        ("=128", ["--param '=128' is malformed"]),
        ("image_size=big", ["image_size='big'", "must be an integer"]),
        ("gate_margin=lots", ["gate_margin='lots'", "must be a number"]),
    ],
)
def test_bad_param_is_one_line_and_sends_nothing(fake, package, capsys, param, expect):
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package),
                         "--param", param)
    assert rc == 2
    line = one_error_line(err)
    for text in expect:
        assert text in line
    assert fake.requests == []


def test_parameters_are_typed_by_the_pipeline(package):
    specs = pipeline_parameters(load_package(package))
    assert coerce_params({"image_size": "64", "gate_margin": "1", "model_name": "g"}, specs) == {
        "image_size": 64, "gate_margin": 1.0, "model_name": "g"}
    assert coerce_params({"gate_margin": 2}, specs) == {"gate_margin": 2.0}  # Python callers
    with pytest.raises(ConfigError, match="must be an integer"):
        coerce_params({"image_size": True}, specs)
    with pytest.raises(ConfigError, match="must be an integer"):
        coerce_params({"image_size": "6.5"}, specs)
    with pytest.raises(ConfigError, match="must be a string"):
        coerce_params({"dataset_uri": 3}, specs)


# --- schedule -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "kfp"),
    [
        ("0 3 * * 1", "0 0 3 * * 1"),
        ("*/15 * * * *", "0 */15 * * * *"),
        ("30 2 1-5,15 jan-MAR MON-FRI", "0 30 2 1-5,15 jan-MAR MON-FRI"),
        ("0 0 3 ? * 2-6", "0 0 3 ? * 2-6"),  # already KFP's 6 fields
        ("  0   3 * * 1 ", "0 0 3 * * 1"),
        ("@Daily", "@daily"),
        ("@every 6h", "@every 6h"),
    ],
)
def test_cron_becomes_kfp_six_field_cron(cron, kfp):
    assert to_kfp_cron(cron) == kfp


@pytest.mark.parametrize(
    ("cron", "why"),
    [
        ("0 3 * *", "expected 5 fields"),
        ("60 * * * *", "minute field '60' is out of range 0-59"),
        ("0 24 * * *", "hour field '24' is out of range 0-23"),
        ("0 3 0 * *", "day of month field '0' is out of range 1-31"),
        ("0 3 * 13 *", "month field '13' is out of range 1-12"),
        ("0 3 * * 7", "use 0 or SUN"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards range"),
        ("0 3 * * MOON", "allowed: 0-6 or SUN-SAT"),
        ("@every soon", "Go duration"),
        ("", "expected 5 fields"),
    ],
)
def test_bad_cron_is_rejected_with_the_field(cron, why):
    with pytest.raises(ConfigError, match=why):
        to_kfp_cron(cron)


def test_schedule_create_disable_enable_list_delete(fake, package, capsys):
    host = ["--host", fake.endpoint]
    rc, out, err = run_cli(capsys, "schedule", *host, "--package", str(package), "--cron", "0 3 * * 1",
                           "--param", "train_steps=100", "--name", "weekly")
    assert rc == 0, err
    (post,) = fake.calls("POST", RECURRING)
    body = post.body
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert body["mode"] == "ENABLE"
    assert body["display_name"] == "weekly"
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True
    assert body["runtime_config"]["parameters"] == {"train_steps": 100}
    assert sent_spec(body)["pipelineInfo"]["name"] == "medsynth-train"
    assert body["experiment_id"] in fake.experiments
    (rid,) = fake.recurring_runs
    assert rid in out and "'0 0 3 * * 1'" in out

    rc, out, _ = run_cli(capsys, "schedule", *host, "--disable", "weekly")  # by name
    assert rc == 0 and "disabled" in out
    assert fake.calls("POST", f"{RECURRING}/{rid}:disable")
    assert fake.recurring_runs[rid]["status"] == "DISABLED"

    rc, out, _ = run_cli(capsys, "schedule", *host, "--enable", rid)  # by id
    assert rc == 0 and "enabled" in out
    assert fake.recurring_runs[rid]["status"] == "ENABLED"

    rc, out, _ = run_cli(capsys, "schedule", *host, "--list")
    assert rc == 0
    row = next(line for line in out.splitlines() if rid in line)
    assert "weekly" in row and "0 0 3 * * 1" in row and "yes" in row

    rc, _, err = run_cli(capsys, "schedule", *host, "--package", str(package), "--cron", "@daily",
                         "--name", "weekly")
    assert rc == 2 and "exists" in one_error_line(err)
    assert len(fake.calls("POST", RECURRING)) == 1

    rc, out, _ = run_cli(capsys, "schedule", *host, "--delete", "weekly")
    assert rc == 0 and "deleted" in out
    assert fake.calls("DELETE", f"{RECURRING}/{rid}") and fake.recurring_runs == {}

    rc, _, err = run_cli(capsys, "schedule", *host, "--disable", "weekly")
    assert rc == 2 and "no recurring run called or with id 'weekly'" in one_error_line(err)


def test_schedule_paused_and_catchup(fake, package, capsys):
    rc, _, err = run_cli(capsys, "schedule", "--host", fake.endpoint, "--package", str(package),
                         "--cron", "0 0 3 ? * 2-6", "--paused", "--catchup", "--max-concurrency", "2",
                         "--no-cache")
    assert rc == 0, err
    body = fake.calls("POST", RECURRING)[0].body
    assert body["mode"] == "DISABLE" and body["no_catchup"] is False and body["max_concurrency"] == 2
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 ? * 2-6"
    compiled = load_package(package)["root"]["dag"]["tasks"]
    assert any(t.get("cachingOptions", {}).get("enableCache") for t in compiled.values())  # prepare
    sent = sent_spec(body)["root"]["dag"]["tasks"]
    assert not any(t.get("cachingOptions", {}).get("enableCache") for t in sent.values())


def test_schedule_bad_input_sends_nothing(fake, package, capsys):
    rc, _, err = run_cli(capsys, "schedule", "--host", fake.endpoint, "--package", str(package),
                         "--cron", "0 3 * * 7")
    assert rc == 2 and "use 0 or SUN" in one_error_line(err)
    rc, _, err = run_cli(capsys, "schedule", "--host", fake.endpoint, "--disable", "x", "--param", "seed=1")
    assert rc == 2 and "--param only apply when creating" in one_error_line(err)
    assert fake.requests == []


# --- runs ---------------------------------------------------------------------------------------
def test_runs_lists_the_newest_with_state(fake, package, capsys):
    client = PipelineClient(fake.endpoint)
    ids = [client.submit(package=package, run_name=f"r{i}", experiment="a" if i < 2 else "b").run_id
           for i in range(3)]
    fake.script_run(["FAILED"], run_id=ids[0])
    client.get_run(ids[0])
    fake.requests.clear()

    rc, out, err = run_cli(capsys, "runs", "--host", fake.endpoint, "-n", "2")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["RUN", "ID", "NAME"] and len(lines) == 3
    assert ids[2] in lines[1] and ids[1] in lines[2]  # newest first
    (req,) = fake.calls("GET", RUNS)
    assert req.query["page_size"] == "2" and req.query["sort_by"] == "created_at desc"

    rc, out, _ = run_cli(capsys, "runs", "--host", fake.endpoint, "--experiment", "a")
    assert rc == 0
    rows = out.strip().splitlines()[1:]
    assert [r.split()[0] for r in rows] == [ids[1], ids[0]]
    assert "FAILED" in rows[1] and "PENDING" in rows[0]
    assert fake.calls("GET", RUNS)[-1].query["experiment_id"] == fake.runs[ids[0]]["experiment_id"]

    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint, "--experiment", "nope")
    assert rc == 2 and "no experiment called 'nope'" in one_error_line(err)


# --- auth, namespaces, errors -------------------------------------------------------------------
def test_token_file_and_namespace(fake, package, capsys, tmp_path):
    fake.multi_user = True
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint)
    assert rc == 2 and "multi-user" in one_error_line(err) and "--namespace" in err

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package),
                         "--namespace", "team-a", "--token-file", str(token_file))
    assert rc == 0, err
    assert fake.calls("POST", EXPERIMENTS)[0].body["namespace"] == "team-a"
    assert fake.calls("GET", EXPERIMENTS)[0].query["namespace"] == "team-a"
    assert fake.calls("POST", RUNS)[0].headers["authorization"] == f"Bearer {TOKEN}"

    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint, "--token-file", str(tmp_path / "missing"))
    assert rc == 2 and "--token-file" in one_error_line(err)


def test_the_connection_comes_from_the_environment(fake, package, capsys, tmp_path, monkeypatch):
    # docs/cluster.md exports these once; every submit/schedule/runs then needs no connection flags.
    fake.multi_user = True
    token_file = tmp_path / "kfp-token"
    token_file.write_text(TOKEN)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("KF_PIPELINES_NAMESPACE", "medsynth")
    monkeypatch.setenv("KF_PIPELINES_TOKEN_FILE", str(token_file))
    rc, _, err = run_cli(capsys, "submit", "--package", str(package))
    assert rc == 0, err
    assert fake.calls("POST", RUNS)[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert fake.calls("POST", EXPERIMENTS)[0].body["namespace"] == "medsynth"
    rc, _, err = run_cli(capsys, "runs", "--namespace", "other")  # a flag still wins
    assert rc == 0, err
    assert fake.calls("GET", RUNS)[-1].query["namespace"] == "other"


def test_in_cluster_reads_the_projected_token(fake, capsys, tmp_path, monkeypatch):
    token_file = tmp_path / "sa-token"
    token_file.write_text("projected-1")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint, "--in-cluster")
    assert rc == 0, err
    assert fake.calls("GET", RUNS)[0].headers["authorization"] == "Bearer projected-1"

    client = PipelineClient(fake.endpoint, in_cluster=True)
    client.list_runs()
    token_file.write_text("projected-2")  # the kubelet rotates it; the same client sends the new one
    client.list_runs()
    assert [r.headers["authorization"] for r in fake.calls("GET", RUNS)][1:] == [
        "Bearer projected-1", "Bearer projected-2"]

    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "none"))
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint, "--in-cluster")
    assert rc == 2 and "--in-cluster: no readable KFP token" in one_error_line(err)


def test_refused_connection_is_one_line(capsys, caplog):
    host = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level(logging.DEBUG):
        rc, _, err = run_cli(capsys, "runs", "--host", host)
    assert rc == 2
    line = one_error_line(err)
    assert f"cannot reach KFP at {host}" in line and "connection refused" in line
    # retries happened but logged nothing an application's log handler would print
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_unknown_host_is_one_line(capsys):
    rc, _, err = run_cli(capsys, "runs", "--host", "http://kfp.does-not-exist.invalid")
    assert rc == 2
    line = one_error_line(err)
    assert "cannot reach KFP" in line and "kfp.does-not-exist.invalid" in line


def test_api_http_error_is_one_line_with_the_body(fake, package, capsys):
    fake.fail("POST", RUNS, 500, {"error": "internal", "code": 13, "message": "failed to create workflow:\n"
                                  "admission webhook denied"})
    rc, _, err = run_cli(capsys, "submit", "--host", fake.endpoint, "--package", str(package))
    assert rc == 2
    line = one_error_line(err)
    assert "HTTP 500" in line and "while creating the run" in line
    assert "failed to create workflow: admission webhook denied" in line


def test_auth_failure_names_the_fix_and_hides_the_token(fake, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
    fake.fail("GET", RUNS, 401, {"message": f"token {TOKEN} has expired"})
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint)
    assert rc == 2
    line = one_error_line(err)
    assert "HTTP 401" in line and "KF_PIPELINES_TOKEN" in line
    assert TOKEN not in err and "***" in line


def test_not_a_kfp_host_and_hanging_host(fake, capsys):
    fake.fail("GET", "/apis/v2beta1/healthz", 404, b"404 page not found")
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint)
    assert rc == 2 and "not a KFP API?" in one_error_line(err)

    fake.hang("GET", RUNS, 2.0)
    rc, _, err = run_cli(capsys, "runs", "--host", fake.endpoint, "--api-timeout", "0.3")
    assert rc == 2 and "no answer within 0.3 s" in one_error_line(err)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["runs"], "--host is required"),
        (["runs", "--host", "kfp.example.com"], "http:// or https://"),
        (["submit", "--host", "http://x", "--package", "pipeline.json"], "compiled pipeline .yaml"),
        (["submit", "--host", "http://x", "--package", "missing.yaml"], "cannot read it"),
        (["submit", "--host", "http://x", "--pipeline-root", "bucket/root"], "object-store URI"),
        (["runs", "--host", "http://x", "-n", "0"], "at least 1"),
    ],
)
def test_bad_flags_are_one_line(capsys, argv, why):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and why in one_error_line(err)
