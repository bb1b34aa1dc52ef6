"""Kubernetes side of training: the KFP task's GPU settings, and multi-node jobs against a fake API server.

The fake API is a real HTTP server on 127.0.0.1 that the official `kubernetes` client talks to: it
records the object the launcher creates and answers status reads with scripted condition
transitions, so the whole create → follow → succeed/fail path runs as it would against a cluster.
"""

import copy
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from http_fake import FakeServer, send_json, send_lines

from medsynth import cluster
from medsynth.errors import ConfigError, MedsynthError
from medsynth.pipeline_steps import TrainTask, launch_step
from medsynth.train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def _cfg(**kw) -> TrainConfig:
    base = dict(
        data="gs://b/datasets/phantom/abc",
        out="gs://b/runs/r1/final",
        image_size=256,
        steps=20000,
        batch_size=256,
        backbone="xception",
        checkpoint_every=500,
    )
    base.update(kw)
    return TrainConfig(**base)


# --- arguments --------------------------------------------------------------------------------


def test_train_argv_round_trips_through_the_cli_parser():
    """One source: the CLI's flags, the job argv and its parsing all come from TrainConfig's fields."""
    cfg = _cfg(
        seed=5,
        augment=True,
        mixed_precision="bfloat16",
        xla="on",
        keep_checkpoints=2,
        gpus=4,
        backbone_mode="trainable",
        metrics_port=9400,
        pushgateway="pgw:9091",
        generator_width=4,
        label_smoothing=0.2,
        generator_norm="instance",
        init_from="gs://b/runs/r1/xception",
        g_ema_kimg=0.0,
    )
    from medsynth.cli import build_parser

    argv = cfg.to_argv()
    assert TrainConfig.from_argv(argv) == cfg
    assert TrainConfig.from_flags(build_parser().parse_args(["train", *argv])) == cfg  # what a pod runs
    assert TrainConfig.from_argv(_cfg().to_argv()) == _cfg()
    # every field has its flag, with help text, in `medsynth train --help`
    train_help = next(a for a in build_parser()._subparsers._group_actions[0].choices.items()
                      if a[0] == "train")[1].format_help()
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in train_help, name


# --- job specs agree with k8s/training ----------------------------------------------------------


def _yaml(directory: str, kind: str) -> dict:
    docs = [
        d
        for d in yaml.safe_load_all(
            (ROOT / "k8s" / "training" / directory / f"{kind.lower()}.yaml").read_text()
        )
    ]
    (job,) = [d for d in docs if d and d.get("kind") == kind]
    return job


def _templates(job: dict) -> dict[str, dict]:
    replicas = job["spec"].get("mpiReplicaSpecs") or job["spec"]["tfReplicaSpecs"]
    return {role: r["template"] for role, r in replicas.items()}


def _train_flags(container: dict) -> set[str]:
    argv = container.get("command", []) + container.get("args", [])
    i = argv.index("train")
    return {a for a in argv[i + 1 :] if a.startswith("--")}


@pytest.mark.parametrize(
    "kind,directory,yaml_kind", [("mpijob", "horovod", "MPIJob"), ("tfjob", "multiworker", "TFJob")]
)
def test_job_spec_has_the_shape_of_the_k8s_training_manifest(kind, directory, yaml_kind):
    from components.images import TRAINER_IMAGE

    ref = _yaml(directory, yaml_kind)
    workers = (
        ref["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"]
        if kind == "mpijob"
        else ref["spec"]["tfReplicaSpecs"]["Worker"]["replicas"]
    )
    gpus = int(_templates(ref)["Worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    job = cluster.job_manifest(kind, _cfg(), workers=workers, gpus_per_worker=gpus, image=TRAINER_IMAGE)
    assert (job["apiVersion"], job["kind"]) == (ref["apiVersion"], ref["kind"])
    assert set(_templates(job)) == set(_templates(ref))
    if kind == "mpijob":
        for key in ("slotsPerWorker", "mpiImplementation", "sshAuthMountPath", "launcherCreationPolicy"):
            assert job["spec"][key] == ref["spec"][key], key
        # the launcher starts only once GPU workers are up (node scale-up would burn its retries)
        assert job["spec"]["launcherCreationPolicy"] == "WaitForWorkersReady"
    for role, tmpl in _templates(job).items():
        rt = _templates(ref)[role]
        pod, rpod = tmpl["spec"], rt["spec"]
        assert tmpl["metadata"]["labels"] == rt["metadata"]["labels"], role
        # no Istio sidecar in a Kubeflow profile namespace: it would keep finished job pods running
        assert tmpl["metadata"]["annotations"] == rt["metadata"]["annotations"] == cluster.POD_ANNOTATIONS
        for key in ("serviceAccountName", "securityContext", "tolerations", "terminationGracePeriodSeconds"):
            assert pod.get(key) == rpod.get(key), (role, key)
        assert {v["name"] for v in pod["volumes"]} == {v["name"] for v in rpod["volumes"]}, role
        (c,), (rc,) = pod["containers"], rpod["containers"]
        assert c["image"] == rc["image"] == TRAINER_IMAGE, "the trainer image of components/images.py"
        for key in ("name", "command", "securityContext", "volumeMounts"):
            assert c.get(key) == rc.get(key), (role, key)
        assert {(p["name"], p["containerPort"]) for p in c.get("ports", [])} == {
            (p["name"], p["containerPort"]) for p in rc.get("ports", [])
        }, role
        assert c["resources"]["limits"].get("nvidia.com/gpu") == rc["resources"]["limits"].get(
            "nvidia.com/gpu"
        )
        if "train" in c.get("command", []) + c.get("args", []):
            # The same `medsynth train` flags as the manifest (which may set fewer), parsed by the real CLI.
            assert _train_flags(rc) <= _train_flags(c), role
            argv = c["command"] + c["args"]
            rargv = rc["command"] + rc["args"]
            assert argv[: argv.index("medsynth")] == rargv[: rargv.index("medsynth")], "launcher flags"
            parsed = TrainConfig.from_argv(argv[argv.index("train") + 1 :])
            assert parsed.strategy == ("horovod" if kind == "mpijob" else "multiworker")
            assert parsed.metrics_port == 9400
            assert parsed.out == _cfg().out and parsed.batch_size == 256


def test_job_spec_checks_its_inputs():
    with pytest.raises(ConfigError, match="does not split over 6 GPUs"):
        cluster.job_manifest("tfjob", _cfg(batch_size=256), workers=2, gpus_per_worker=3, image="x")
    with pytest.raises(ConfigError, match="unknown training job kind"):
        cluster.job_manifest("pytorchjob", _cfg(), workers=2, gpus_per_worker=1, image="x")
    with pytest.raises(ConfigError, match="no trainer image"):
        cluster.job_manifest("tfjob", _cfg(), workers=2, gpus_per_worker=1, image="")


@pytest.mark.parametrize("kind", ["mpijob", "tfjob"])
def test_spot_and_credentials_reach_every_job_pod(kind):
    job = cluster.job_manifest(
        kind, _cfg(), workers=2, gpus_per_worker=8, image="i", spot=True, credentials_secret="gcs-key"
    )
    for role, tmpl in _templates(job).items():
        pod = tmpl["spec"]
        (c,) = pod["containers"]
        secret = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secret == {"gcp-credentials": "gcs-key"}, role
        mount = next(m for m in c["volumeMounts"] if m["name"] == "gcp-credentials")
        key = f"{mount['mountPath']}/key.json"
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        if role == "Worker" and kind == "mpijob":
            # sshd's sessions get the launcher's environment from horovodrun; the file must be here too
            assert "GOOGLE_APPLICATION_CREDENTIALS" not in env
        else:
            assert env["GOOGLE_APPLICATION_CREDENTIALS"] == key, role
        if role == "Worker":
            assert cluster.SPOT_TOLERATION in pod["tolerations"]
    plain = cluster.job_manifest(kind, _cfg(), workers=2, gpus_per_worker=8, image="i")
    for tmpl in _templates(plain).values():
        assert cluster.SPOT_TOLERATION not in tmpl["spec"].get("tolerations", [])
        assert not [v for v in tmpl["spec"]["volumes"] if "secret" in v]


def _pod_env(name: str, uid: str, namespace: str) -> dict[str, str]:
    return dict(zip(cluster.POD_ENV.values(), (name, uid, namespace), strict=True))


def test_the_job_is_owned_by_the_launch_pod_only_in_its_own_namespace():
    env = _pod_env("run-x-launch", "u-1", "medsynth")
    owner = cluster.owner_reference("medsynth", env)
    assert owner == {"apiVersion": "v1", "kind": "Pod", "name": "run-x-launch", "uid": "u-1",
                     "blockOwnerDeletion": False}
    job = cluster.job_manifest("tfjob", _cfg(), workers=2, gpus_per_worker=4, image="i", owner=owner)
    assert job["metadata"]["ownerReferences"] == [owner]
    # A cross-namespace owner counts as absent: the garbage collector would delete the job at once.
    assert cluster.owner_reference("other", env) is None
    assert cluster.owner_reference("medsynth", {}) is None
    plain = cluster.job_manifest("tfjob", _cfg(), workers=2, gpus_per_worker=4, image="i")
    assert "ownerReferences" not in plain["metadata"]


# --- following a job through the Kubernetes API -----------------------------------------------------


class FakeKubeApi:
    """The custom-object endpoints the launcher uses: create, list, watch and delete.

    `script` is the job's history: the conditions of each version in turn (None: deleted), version
    i at resourceVersion 10 * (i + 1). A list (by fieldSelector metadata.name=…) returns the next
    version each time, as if the job moved on between reads; a watch from resourceVersion r streams
    every version after r (MODIFIED, or DELETED for None), then holds the stream until its
    timeoutSeconds and ends it, with a BOOKMARK (the cluster's version moved on) when asked for.
    The first `gone` watches get 410 Gone instead: an ERROR event, or the HTTP status when
    `gone_as_status`; the next `broken` ones break off after their first event.
    """

    def __init__(
        self,
        script: list[list[dict] | None],
        existing: bool = False,
        gone: int = 0,
        gone_as_status: bool = False,
        broken: int = 0,
    ) -> None:
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.lists = 0
        self.watches: list[dict[str, str]] = []  # each watch's query parameters
        self.script = script
        self.existing = existing
        self.gone = gone
        self.gone_as_status = gone_as_status
        self.broken = broken
        self.objects: dict[str, dict] = {}
        self.closing = threading.Event()
        # HTTP/1.0: one request per connection, so a body nobody reads (DELETE's) cannot spill over.
        self.server = FakeServer(self._handle, protocol="HTTP/1.0")

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.command == "POST":
            return self._create(h)
        if h.command == "GET":
            return self._get(h)
        if h.command == "DELETE":
            self.deleted.append(h.path)
            return send_json(h, 200, {"kind": "Status", "status": "Success"})
        return h.send_error(501)

    def _create(self, h: BaseHTTPRequestHandler) -> None:
        m = re.fullmatch(r"/apis/kubeflow.org/(\w+)/namespaces/([\w-]+)/(\w+)", h.path)
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        if not m:
            return send_json(h, 404, {"kind": "Status", "code": 404})
        name = body["metadata"]["name"]
        if self.existing or name in self.objects:
            return send_json(h, 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
        self.created.append({"path": h.path, "body": body})
        self.objects[name] = body
        return send_json(h, 201, body)

    def _version(self, name: str, i: int) -> dict | None:
        if self.script[i] is None:
            return None
        obj = copy.deepcopy(self.objects.get(name) or {"metadata": {"name": name}})
        obj["metadata"]["resourceVersion"] = str(10 * (i + 1))
        obj["status"] = {"conditions": self.script[i]}
        return obj

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        m = re.fullmatch(r"metadata\.name=([\w.-]+)", query.get("fieldSelector", ""))
        if not re.fullmatch(r"/apis/kubeflow.org/(\w+)/namespaces/([\w-]+)/(\w+)", url.path) or not m:
            return send_json(h, 404, {"kind": "Status", "code": 404})
        if query.get("watch", "").lower() == "true":
            return self._watch(h, m.group(1), query)
        i = min(self.lists, len(self.script) - 1)
        self.lists += 1
        obj = self._version(m.group(1), i)
        listed = {"metadata": {"resourceVersion": str(10 * (i + 1))}, "items": [obj] if obj else []}
        return send_json(h, 200, listed)

    def _watch(self, h: BaseHTTPRequestHandler, name: str, query: dict[str, str]) -> None:
        start = time.monotonic()
        self.watches.append(query)
        if self.gone:
            self.gone -= 1
            expired = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                       "message": f"too old resource version: {query['resourceVersion']}", "code": 410}
            if self.gone_as_status:
                return send_json(h, 410, expired)
            return send_lines(h, 200, [{"type": "ERROR", "object": expired}])
        drop = self.broken > 0
        self.broken -= drop

        def events():
            since = int(query["resourceVersion"])
            for i in range(len(self.script)):
                if 10 * (i + 1) > since:
                    obj = self._version(name, i)
                    if obj is None:
                        yield {"type": "DELETED", "object": self._version(name, i - 1)}
                        return
                    yield {"type": "MODIFIED", "object": obj}
                    if drop:  # no end chunk: the client sees the connection break
                        raise ConnectionResetError("the fake drops this watch")
            self.closing.wait(start + int(query["timeoutSeconds"]) - time.monotonic())
            if query.get("allowWatchBookmarks", "").lower() == "true":
                newest = {"resourceVersion": str(max(since, 10 * len(self.script)) + 1)}
                yield {"type": "BOOKMARK", "object": {"kind": "TFJob", "metadata": newest}}

        return send_lines(h, 200, events())

    def __enter__(self) -> "FakeKubeApi":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()  # ends the watches still held open
        self.server.stop()

    def client(self):
        from kubernetes import client

        conf = client.Configuration()
        conf.host = self.server.url
        return client.ApiClient(conf)


def _cond(*types: str, message: str = "") -> list[dict]:
    return [{"type": t, "status": "True", "reason": f"Job{t}", "message": message} for t in types]


def test_launcher_creates_the_job_and_follows_it_to_success():
    script = [
        [],
        _cond("Created"),
        _cond("Created", "Running"),
        _cond("Created", "Running"),
        _cond("Created", "Running", "Succeeded"),
    ]
    seen = []
    with FakeKubeApi(script) as api:
        outcome = cluster.launch_training_job(
            _cfg(),
            "tfjob",
            workers=2,
            gpus_per_worker=4,
            image="img:1",
            api_client=api.client(),
            poll_s=0.01,
            on_state=seen.append,
        )
    assert outcome.state == "Succeeded" and outcome.kind == "TFJob"
    assert seen == ["Pending", "Created", "Running", "Succeeded"]
    (created,) = api.created
    assert created["path"] == "/apis/kubeflow.org/v1/namespaces/medsynth/tfjobs"
    body = created["body"]
    assert body["metadata"]["name"] == outcome.name == cluster.job_name(_cfg(), "tfjob")
    c = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert c["image"] == "img:1"
    assert TrainConfig.from_argv(c["args"]) == TrainConfig(
        **{**_cfg().to_dict(), "strategy": "multiworker", "metrics_port": 9400}
    )
    assert not api.deleted


def test_launcher_reports_a_failed_job_with_its_message():
    script = [
        _cond("Created", "Running"),
        _cond("Created", "Running", "Failed", message="worker-1 OOMKilled"),
    ]
    with FakeKubeApi(script) as api, pytest.raises(MedsynthError, match="failed: worker-1 OOMKilled"):
        cluster.launch_training_job(
            _cfg(),
            "mpijob",
            workers=2,
            gpus_per_worker=8,
            image="img:1",
            api_client=api.client(),
            poll_s=0.01,
        )
    assert api.created[0]["path"] == "/apis/kubeflow.org/v2beta1/namespaces/medsynth/mpijobs"


def test_a_retried_launcher_follows_the_existing_job_and_a_timeout_deletes_it():
    with FakeKubeApi([_cond("Created", "Running", "Succeeded")], existing=True) as api:
        outcome = cluster.launch_training_job(
            _cfg(), "tfjob", workers=2, gpus_per_worker=4, image="i", api_client=api.client(), poll_s=0.01
        )
    assert outcome.state == "Succeeded" and not api.created  # 409: adopted, not created twice

    with FakeKubeApi([_cond("Created", "Running")]) as api, pytest.raises(MedsynthError, match="deleted it"):
        cluster.launch_training_job(
            _cfg(),
            "tfjob",
            workers=2,
            gpus_per_worker=4,
            image="i",
            api_client=api.client(),
            poll_s=0.01,
            timeout_s=0.05,
        )
    assert [p.split("?")[0] for p in api.deleted] == [
        f"/apis/kubeflow.org/v1/namespaces/medsynth/tfjobs/{cluster.job_name(_cfg(), 'tfjob')}"
    ]


def test_launch_step_builds_the_run_dir_in_the_bucket(monkeypatch):
    for k, v in _pod_env("p", "u", "medsynth").items():
        monkeypatch.setenv(k, v)
    with FakeKubeApi([_cond("Succeeded")]) as api:
        task = TrainTask(dataset_dir="gs://b/datasets/phantom/h", storage_root="gs://b/medsynth",
                         run_id="run-7", run_name="final", backbone="xception", image_size=64, steps=100,
                         batch_size=32, backbone_weights="imagenet", seed=0, d_augment="translation")
        (run_dir,) = launch_step(
            task,
            "tfjob",
            workers=2,
            gpus_per_worker=2,
            image="i",
            spot=True,
            credentials_secret="gcs-key",
            api_client=api.client(),
            poll_s=0.01,
        )
    assert run_dir == "gs://b/medsynth/runs/run-7/final"
    body = api.created[0]["body"]
    pod = body["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]
    cfg = TrainConfig.from_argv(pod["containers"][0]["args"])
    assert cfg.out == run_dir and cfg.d_augment == "translation"  # the pipeline's setting reaches the pods
    assert pod["containers"][0]["image"] == "i"
    assert cluster.SPOT_TOLERATION in pod["tolerations"]
    assert [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v] == ["gcs-key"]
    assert body["metadata"]["ownerReferences"][0]["uid"] == "u"


_FOLLOWER = """
import logging, sys
from kubernetes import client
from medsynth.errors import MedsynthError
from medsynth import cluster
from medsynth.train.config import TrainConfig
logging.basicConfig(level=logging.INFO)
conf = client.Configuration()
conf.host = sys.argv[1]
cfg = TrainConfig(data="gs://b/d", out="gs://b/runs/r1/final", batch_size=8)
try:
    cluster.launch_training_job(cfg, "tfjob", 2, 4, "img:1", api_client=client.ApiClient(conf), poll_s=30)
except MedsynthError as e:
    print("medsynth:", e)
    sys.exit(3)
"""


def test_sigterm_makes_the_launcher_delete_its_job():
    # A real process and a real signal: a cancelled KFP run stops the launcher's pod with SIGTERM.
    with FakeKubeApi([_cond("Created", "Running")]) as api:
        url = api.server.url
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", _FOLLOWER, url], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not api.watches and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert api.watches, proc.communicate()[0]
        time.sleep(0.2)  # the launcher is blocked reading the watch, which the fake holds for 30 s
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        stopped_in = time.monotonic() - sent
    assert proc.returncode == 3, out
    assert "got SIGTERM" in out and "deleted it" in out
    assert api.watches[0]["timeoutSeconds"] == "30" and stopped_in < 10, stopped_in  # not the window's end
    (deleted,) = api.deleted
    name = api.created[0]["body"]["metadata"]["name"]
    assert deleted.split("?")[0] == f"/apis/kubeflow.org/v1/namespaces/medsynth/tfjobs/{name}"


def _follow(api: FakeKubeApi, seen: list[str] | None = None, **kw) -> cluster.JobOutcome:
    """The launcher on a TFJob, in watch windows of 5 s unless told; `seen` collects its states."""
    kw = {"poll_s": 5, "on_state": None if seen is None else seen.append, **kw}
    return cluster.launch_training_job(_cfg(), "tfjob", workers=2, gpus_per_worker=4, image="i",
                                       api_client=api.client(), **kw)


@pytest.mark.parametrize("end", ["Succeeded", "Failed"])
def test_one_watch_sees_the_job_go_from_running_to_its_end(end):
    seen: list[str] = []
    script = [_cond("Created", "Running"), _cond("Created", "Running"), _cond("Running", end, message="oom")]
    with FakeKubeApi(script) as api:
        if end == "Failed":
            with pytest.raises(MedsynthError, match="failed: oom"):
                _follow(api, seen)
        else:
            assert _follow(api, seen).transitions == ["Running", "Succeeded"]
    assert seen == ["Running", end]
    # listed once, then one watch window of poll_s seconds streamed the rest
    (watch,) = api.watches
    assert api.lists == 1 and watch["resourceVersion"] == "10" and watch["timeoutSeconds"] == "5"
    assert watch["fieldSelector"] == f"metadata.name={cluster.job_name(_cfg(), 'tfjob')}"
    assert not api.deleted


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-status"])
def test_a_410_gone_watch_lists_the_job_again_and_goes_on(as_status):
    seen: list[str] = []
    script = [_cond("Created"), _cond("Created", "Running"), _cond("Running"), _cond("Running", "Succeeded")]
    with FakeKubeApi(script, gone=1, gone_as_status=as_status) as api:
        assert _follow(api, seen).state == "Succeeded"
    assert seen == ["Created", "Running", "Succeeded"]
    # the list after the 410 gave a newer version to watch from
    assert api.lists == 2 and [w["resourceVersion"] for w in api.watches] == ["10", "20"]


def test_a_watch_that_breaks_off_goes_on_from_its_last_version():
    seen: list[str] = []
    with FakeKubeApi([_cond("Created"), _cond("Running"), _cond("Succeeded")], broken=1) as api:
        assert _follow(api, seen).state == "Succeeded"
    assert seen == ["Created", "Running", "Succeeded"]
    assert api.lists == 1 and [w["resourceVersion"] for w in api.watches] == ["10", "20"]


def test_a_quiet_job_is_watched_window_after_window_until_the_timeout():
    seen: list[str] = []
    with FakeKubeApi([_cond("Created", "Running")]) as api, pytest.raises(MedsynthError, match="deleted it"):
        _follow(api, seen, poll_s=1, timeout_s=1.5)
    assert seen == ["Running"]  # a bookmark is no state
    # the second window goes on from the first one's bookmark, and ends with the timeout
    assert [(w["resourceVersion"], w["timeoutSeconds"]) for w in api.watches] == [("10", "1"), ("11", "1")]
    assert len(api.deleted) == 1


@pytest.mark.parametrize("script", [[_cond("Running"), None], [None]], ids=["watched", "listed"])
def test_a_job_deleted_by_someone_else_ends_the_launcher(script):
    with FakeKubeApi(script) as api, pytest.raises(MedsynthError, match="deleted before it finished"):
        _follow(api)
    assert not api.deleted  # nothing left to delete


# --- the single-pod KFP task -------------------------------------------------------------------------


def test_configure_gpu_task_compiles_into_the_pipeline_spec(tmp_path):
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11")
    def noop(x: int) -> int:
        return x

    @dsl.pipeline(name="gpu-check")
    def pipe(gpus: int = 2):
        task = noop(x=1)
        cluster.configure_gpu_task(task, gpus, gpu_type="nvidia-l4", spot=True, credentials_secret="gcs-key")

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipe, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    text = json.dumps(docs)
    container = docs[0]["deploymentSpec"]["executors"]["exec-noop"]["container"]
    assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "GOOGLE_APPLICATION_CREDENTIALS" in json.dumps(container.get("env", []))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-noop"]
    assert platform["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    keys = {t.get("key") for t in platform["tolerations"]}
    assert keys == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
    assert platform["secretAsVolume"][0]["secretName"] == "gcs-key"
    assert platform["emptyDirMounts"][0]["mountPath"] == "/dev/shm"
    assert "gpus" in text  # the limit follows the pipeline parameter


def test_the_launch_component_compiles_into_a_pipeline(tmp_path):
    from kfp import compiler, dsl

    from components.launch_training_job import launch_training_job

    @dsl.pipeline(name="multi-node")
    def pipe(workers: int = 2):
        launch_training_job(
            kind="mpijob",
            dataset_dir="gs://b/d",
            storage_root="gs://b/m",
            run_id="r",
            run_name="final",
            backbone="xception",
            image_size=256,
            steps=10,
            batch_size=64,
            backbone_weights="imagenet",
            seed=0,
            workers=workers,
            gpus_per_worker=8,
            image="trainer:1",
        )

    out = tmp_path / "p.yaml"
    compiler.Compiler().compile(pipe, str(out))
    spec = yaml.safe_load(out.read_text())
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert "launch_step" in " ".join(executor["container"]["command"])
    assert executor["container"]["image"].endswith("/base:" + __import__("medsynth").__version__)
