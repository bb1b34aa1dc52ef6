"""k8s/: every kustomization renders, every object is schema-valid offline, the security baseline holds,
and the pieces agree with each other (ports, config files, image tags, the `medsynth train` flags).

Renders with `kubectl kustomize` (kubectl 1.32, kustomize v5.5); validates core kinds with
kubernetes-validate's 1.32 schemas. CRDs (MPIJob, TFJob, PodMonitor, Istio policies) get structural
checks, and the pod templates inside them are validated as core PodTemplates. Policy checks decide,
on the rendered objects, what a real API server, Istio and the kubelet would: which service account
may do what (RBAC), which requests reach TF Serving through the sidecar, and whether memory-backed
volumes fit their pod's memory limit. Kustomizations that pull remote bases (k8s/operators) cannot
render offline and are checked statically.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components import images
from medsynth import __version__
from medsynth.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
K8S_VERSION = "1.32.0"
CRD_GROUPS = ("kubeflow.org", "monitoring.coreos.com", "security.istio.io")


def _is_remote(resource: str) -> bool:
    return bool(re.match(r"(https?://|github\.com/)", resource))


def _kustomizations(root: Path = K8S) -> list[Path]:
    """Every directory with a kustomization.yaml that renders on its own, offline (components do not,
    and remote bases need the network)."""
    dirs = []
    for path in sorted(root.rglob("kustomization.yaml")):
        doc = yaml.safe_load(path.read_text())
        if doc.get("kind") != "Component" and not any(map(_is_remote, doc.get("resources", []))):
            dirs.append(path.parent)
    return dirs


KUSTOMIZATIONS = _kustomizations()
IDS = [str(d.relative_to(K8S)) for d in KUSTOMIZATIONS]


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: pip install kubernetes-validate==1.37.0 (the test extra)"
        )
    return kubernetes_validate


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is not on PATH: these tests render k8s/ with `kubectl kustomize` "
            "(kubectl >= 1.27 ships kustomize v5). Install kubectl and run again."
        )
    return path


@functools.cache
def _render_text(directory: str) -> str:
    proc = subprocess.run(
        [_kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
    return proc.stdout


def render(directory: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(_render_text(str(directory))) if doc]


def _group(obj: dict) -> str:
    api = obj["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def _pod_templates(obj: dict) -> Iterator[tuple[str, dict]]:
    """(label, pod template) for every workload kind medsynth uses."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield kind, spec["template"]
    elif kind == "MPIJob":
        for role, replica in spec["mpiReplicaSpecs"].items():
            yield f"MPIJob/{role}", replica["template"]
    elif kind == "TFJob":
        for role, replica in spec["tfReplicaSpecs"].items():
            yield f"TFJob/{role}", replica["template"]


def _containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- rendering and schemas -------------------------------------------------------------------


def test_every_k8s_directory_is_covered():
    # A kustomization added later is picked up automatically; make sure the expected ones exist.
    names = set(IDS)
    for expected in (
        "namespace",
        "base",
        "pipeline-runner",
        "kfp-standalone",
        "istio",
        "serving",
        "training/horovod",
        "training/multiworker",
        "monitoring",
        "overlays/gcp",
        "overlays/gcp/standalone",
        "overlays/gcp/multi-user",
    ):
        assert expected in names, f"k8s/{expected} has no kustomization.yaml"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=IDS)
def test_renders_with_unique_named_objects(directory):
    objs = render(directory)
    assert objs, f"{directory} renders nothing"
    keys = []
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind") and obj.get("metadata", {}).get("name"), obj
        keys.append((obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"]))
        if obj["kind"] == "Namespace":
            continue
        namespace = obj["metadata"].get("namespace")
        if directory.name == "pipeline-runner":  # namespaced by whoever includes it
            assert namespace is None, keys[-1]
        elif namespace == "kubeflow":  # standalone KFP runs pipelines there: only the run's account and RBAC
            assert obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"), keys[-1]
        else:
            assert namespace == "medsynth", f"{keys[-1]} is not in namespace medsynth"
    assert len(keys) == len(set(keys)), f"duplicate objects in {directory}: {keys}"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=IDS)
def test_core_objects_match_kubernetes_schemas(directory):
    kubernetes_validate = _kubernetes_validate()
    checked = 0
    for obj in render(directory):
        if _group(obj) in CRD_GROUPS:
            # CRDs: the pod templates inside them are core objects; validate those strictly.
            for label, template in _pod_templates(obj):
                pod_template = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{obj['metadata']['name']}-{label.split('/')[-1].lower()}"},
                    "template": template,
                }
                _validate(
                    kubernetes_validate, pod_template, f"{obj['kind']} {obj['metadata']['name']} {label}"
                )
                checked += 1
            if _group(obj) == "security.istio.io":
                _check_istio(obj)
                checked += 1
            continue
        _validate(kubernetes_validate, obj, f"{obj['kind']} {obj['metadata']['name']}")
        checked += 1
    assert checked, f"nothing in {directory} was validated"


# The fields of Istio's security API (security.istio.io v1beta1/v1) that medsynth may use.
_ISTIO_FIELDS = {
    "AuthorizationPolicy": {"selector", "action", "rules"},
    "PeerAuthentication": {"selector", "mtls", "portLevelMtls"},
}
_OPERATION_FIELDS = {"hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths"}
_MTLS_MODES = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}


def _check_istio(obj: dict) -> None:
    """Istio CRDs have no schema here: reject unknown fields and values Istio would refuse."""
    where, spec = f"{obj['kind']} {obj['metadata']['name']}", obj["spec"]
    assert obj["kind"] in _ISTIO_FIELDS and set(spec) <= _ISTIO_FIELDS[obj["kind"]], where
    assert set(spec.get("selector", {})) <= {"matchLabels"}, where
    if obj["kind"] == "AuthorizationPolicy":
        assert spec.get("action", "ALLOW") in ("ALLOW", "DENY", "AUDIT", "CUSTOM"), where
        for rule in spec.get("rules", []):
            assert set(rule) <= {"from", "to", "when"}, where
            for to in rule.get("to", []):
                op = to["operation"]
                assert set(op) <= _OPERATION_FIELDS, f"{where}: {set(op) - _OPERATION_FIELDS}"
                assert all(isinstance(p, str) and p.isdigit() for p in op.get("ports", [])), where
    else:
        modes = [spec.get("mtls", {}).get("mode", "UNSET")]
        modes += [m["mode"] for m in spec.get("portLevelMtls", {}).values()]
        assert set(modes) <= _MTLS_MODES, where
        assert all(str(p).isdigit() for p in spec.get("portLevelMtls", {})), where
        assert not spec.get("portLevelMtls") or spec.get("selector"), f"{where}: portLevelMtls, no selector"


def test_istio_check_rejects_a_typo():
    policy = {"kind": "AuthorizationPolicy", "metadata": {"name": "x"},
              "spec": {"rules": [{"to": [{"operation": {"port": ["8501"]}}]}]}}
    with pytest.raises(AssertionError, match="port"):
        _check_istio(policy)


def _validate(kubernetes_validate, obj: dict, what: str) -> None:
    try:
        # strict: unknown fields (typos) are errors too.
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(
            f"{what} does not match the Kubernetes {K8S_VERSION} schema: {e.message} at {list(e.path)}"
        )


def test_schema_validation_rejects_a_broken_object():
    # The check above must be able to fail: a typo in a container field is caught.
    kubernetes_validate = _kubernetes_validate()
    deployment = _one(render(K8S / "serving"), "Deployment", "tf-serving")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# --- security baseline -----------------------------------------------------------------------


def _workloads() -> list[tuple[str, dict]]:
    out = []
    for directory, rel in zip(KUSTOMIZATIONS, IDS, strict=True):
        for obj in render(directory):
            for label, template in _pod_templates(obj):
                out.append((f"{rel}:{obj['metadata']['name']}:{label}", template))
    return out


def test_there_are_workloads_to_check():
    labels = {label for label, _ in _workloads()}
    assert any("Deployment" in x for x in labels)
    assert any("MPIJob/Worker" in x for x in labels) and any("TFJob/Worker" in x for x in labels)


@pytest.mark.parametrize("label,template", _workloads(), ids=[w[0] for w in _workloads()])
def test_security_baseline(label, template):
    pod = template["spec"]
    pod_sc = pod.get("securityContext", {})
    assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", (
        f"{label}: seccomp RuntimeDefault"
    )
    assert pod.get("hostNetwork") is not True and pod.get("hostPID") is not True, label
    for c in _containers(template):
        where = f"{label} container {c['name']}"
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, f"{where}: runs as uid 0"
        assert sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation must be false"
        assert sc.get("privileged") is not True, where
        assert sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: drop ALL capabilities"
        assert not sc.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
        # A read-only root needs somewhere to write temporary files.
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: read-only root filesystem but no writable /tmp"
        res = c.get("resources", {})
        for key in ("cpu", "memory"):
            assert key in res.get("requests", {}), f"{where}: no {key} request"
            assert key in res.get("limits", {}), f"{where}: no {key} limit"
            assert _quantity(res["requests"][key]) <= _quantity(res["limits"][key]), (
                f"{where}: {key} request > limit"
            )
        gpus = res.get("limits", {}).get("nvidia.com/gpu")
        if gpus is not None:
            assert res.get("requests", {}).get("nvidia.com/gpu") == gpus, f"{where}: GPU request != limit"
        _check_image(c["image"], where)
        # tmpfs (an emptyDir in Memory, e.g. NCCL's /dev/shm) is charged to the container's memory:
        # its limit must hold the volume and still leave the process room.
        shm = _memory_volumes(pod, c)
        if shm:
            limit = _quantity(res["limits"]["memory"])
            assert limit >= shm + 8 * 2**30, (
                f"{where}: a {limit / 2**30:.0f} GiB memory limit leaves no room beside "
                f"{shm / 2**30:.0f} GiB of memory-backed volumes"
            )


def _memory_volumes(pod: dict, container: dict) -> float:
    """Bytes of memory-backed emptyDir volumes the container mounts (sizeLimit is required for them)."""
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    total = 0.0
    for v in pod.get("volumes", []):
        if v["name"] in mounted and v.get("emptyDir", {}).get("medium") == "Memory":
            assert "sizeLimit" in v["emptyDir"], f"memory-backed volume {v['name']} has no sizeLimit"
            total += _quantity(v["emptyDir"]["sizeLimit"])
    return total


def test_memory_volume_check_catches_an_unbacked_shm():
    pod = {"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]}
    c = {"volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    c["resources"] = {"limits": {"memory": "20Gi"}}
    assert _memory_volumes(pod, c) == 16 * 2**30
    assert _quantity(c["resources"]["limits"]["memory"]) < _memory_volumes(pod, c) + 8 * 2**30
    with pytest.raises(AssertionError, match="no sizeLimit"):
        _memory_volumes({"volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]}, c)


_UNITS = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def _quantity(value: str | int | float) -> float:
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert m and m.group(2) in _UNITS, f"cannot parse quantity {value!r}"
    return float(m.group(1)) * _UNITS[m.group(2)]


def _check_image(ref: str, where: str) -> None:
    assert "@sha256:" in ref or re.search(r":[\w][\w.-]*$", ref.rsplit("/", 1)[-1]), (
        f"{where}: untagged image {ref}"
    )
    assert not ref.endswith(":latest"), f"{where}: image {ref} uses the latest tag"


def test_image_check_rejects_latest_and_untagged():
    for bad in ("tensorflow/serving", "tensorflow/serving:latest", "localhost:5000/medsynth/base"):
        with pytest.raises(AssertionError):
            _check_image(bad, "test")
    _check_image("localhost:5000/medsynth/base:0.1.0", "test")


def test_medsynth_images_are_the_ones_components_use(monkeypatch):
    # Without MEDSYNTH_REGISTRY, components/images.py gives the same placeholder references as k8s/.
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    trainer = images.image("trainer")
    assert trainer.endswith(f":{__version__}")
    seen = set()
    for obj in render(K8S / "training" / "horovod") + render(K8S / "training" / "multiworker"):
        for _, template in _pod_templates(obj):
            for c in _containers(template):
                seen.add(c["image"])
    assert seen == {trainer}
    serving = _one(render(K8S / "serving"), "Deployment", "tf-serving")
    assert serving["spec"]["template"]["spec"]["containers"][0]["image"] == images.SERVING_IMAGE


# --- serving ---------------------------------------------------------------------------------


def _serving() -> dict:
    objs = render(K8S / "serving")
    return {"objs": objs, "deploy": _one(objs, "Deployment", "tf-serving"), "config": _one(objs, "ConfigMap")}


def _flags(args: list[str]) -> dict[str, str]:
    out = {}
    for a in args:
        key, _, value = a.partition("=")
        out[key] = value
    return out


def test_serving_flags_point_at_mounted_config_files():
    s = _serving()
    pod = s["deploy"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    flags = _flags(c["args"])
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = {}
    for name, path in mounts.items():
        if "configMap" in volumes[name]:
            assert volumes[name]["configMap"]["name"] == s["config"]["metadata"]["name"]
            for key, text in s["config"]["data"].items():
                files[f"{path}/{key}"] = text
    for flag in ("--model_config_file", "--monitoring_config_file", "--batching_parameters_file"):
        assert flags.get(flag) in files, (
            f"{flag}={flags.get(flag)} is not a mounted config file ({sorted(files)})"
        )
    assert flags["--enable_batching"] == "true"
    assert int(flags["--file_system_poll_wait_seconds"]) > 0
    assert flags["--port"] == "8500" and flags["--rest_api_port"] == "8501"

    model_config = files[flags["--model_config_file"]]
    model_name = re.search(r'name:\s*"([^"]+)"', model_config).group(1)
    assert re.search(r'base_path:\s*"gs://[^/"]+/models/' + model_name + '"', model_config), model_config
    # Readiness asks TF Serving for exactly that model's metadata (200 only with a version AVAILABLE:
    # tests/test_serving_rollout.py); liveness (and start-up, which gates it) only whether the server
    # answers: a model directory briefly missing must not restart every replica.
    assert c["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model_name}/metadata"
    port_names = {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "livenessProbe"):
        assert "httpGet" not in c[probe] and c[probe]["tcpSocket"]["port"] in port_names, probe

    monitoring = files[flags["--monitoring_config_file"]]
    assert re.search(r"enable:\s*true", monitoring)
    metrics_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
    monitor = _one(s["objs"], "PodMonitor")
    assert [e["path"] for e in monitor["spec"]["podMetricsEndpoints"]] == [metrics_path]

    batching = files[flags["--batching_parameters_file"]]
    assert int(re.search(r"max_batch_size\s*{\s*value:\s*(\d+)", batching).group(1)) >= 16


def test_serving_objects_select_the_serving_pods():
    s = _serving()
    pod_labels = s["deploy"]["spec"]["template"]["metadata"]["labels"]
    c = s["deploy"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert _matches(s["deploy"]["spec"]["selector"], pod_labels)

    svc = _one(s["objs"], "Service", "tf-serving")
    assert all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items())
    assert {(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {(8500, "grpc"), (8501, "http")}

    hpa = _one(s["objs"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == s["deploy"]["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot survive a node drain"
    assert "replicas" not in s["deploy"]["spec"], "the HPA owns replicas; an apply would reset them"
    assert any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])

    pdb = _one(s["objs"], "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"], pod_labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "the PDB would block every drain"

    policy = _one(s["objs"], "NetworkPolicy")
    assert _matches(policy["spec"]["podSelector"], pod_labels)
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {8500, 8501}

    monitor = _one(s["objs"], "PodMonitor")
    assert _matches(monitor["spec"]["selector"], pod_labels)
    assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= set(ports)

    assert s["deploy"]["spec"]["template"]["spec"]["serviceAccountName"] == "medsynth-serving"


# --- training jobs ---------------------------------------------------------------------------


def _train_args(argv: list[str]):
    """Parse a container's `medsynth train ...` exactly as the CLI would."""
    i = argv.index("medsynth")
    assert argv[i + 1] == "train", argv
    return build_parser().parse_args(argv[i + 1 :])  # the CLI's parser, as the pod's `medsynth` runs it


def test_mpijob_runs_horovod_over_the_operators_ssh():
    job = _one(render(K8S / "training" / "horovod"), "MPIJob")
    assert job["apiVersion"] == "kubeflow.org/v2beta1"
    spec = job["spec"]
    assert set(spec["mpiReplicaSpecs"]) == {"Launcher", "Worker"}
    launcher = spec["mpiReplicaSpecs"]["Launcher"]
    worker = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["replicas"] == 1
    lc = launcher["template"]["spec"]["containers"][0]
    wc = worker["template"]["spec"]["containers"][0]
    argv = lc["command"] + lc["args"]
    assert argv[0] == "horovodrun" and "--gloo" in argv
    np_ = int(argv[argv.index("-np") + 1])
    assert np_ == worker["replicas"] * spec["slotsPerWorker"], "-np must be Worker replicas x slotsPerWorker"
    assert argv[argv.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    # GPUs per worker pod = ranks per worker pod.
    assert int(wc["resources"]["limits"]["nvidia.com/gpu"]) == spec["slotsPerWorker"]
    assert "nvidia.com/gpu" not in lc["resources"].get("limits", {}), "the launcher needs no GPU"

    # The worker runs the image's non-root sshd; its port and key path agree with images/trainer.
    sshd = _sshd_config()
    # PID 1 is medsynth's worker entrypoint, which runs sshd (tests/test_worker.py: it saves the ranks)
    assert wc["command"] == ["python", "-m", "medsynth.cluster.worker"]
    assert wc["args"][0] == "/usr/sbin/sshd"
    config_path = wc["args"][wc["args"].index("-f") + 1]
    assert config_path == "/home/medsynth/.sshd_config"
    assert argv[argv.index("-p") + 1] == sshd["Port"]
    assert {p["containerPort"] for p in wc["ports"] if p["name"] == "ssh"} == {int(sshd["Port"])}
    assert str(Path(sshd["HostKey"]).parent) == spec["sshAuthMountPath"]

    args = _train_args(argv)
    assert args.strategy == "horovod"
    assert args.metrics_port == 9400
    assert {p["containerPort"] for p in wc["ports"] if p["name"] == "metrics"} == {9400}


def _sshd_config() -> dict[str, str]:
    text = (ROOT / "images" / "trainer" / "sshd_config").read_text()
    pairs = (line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {k: v.strip() for k, v in pairs}


def test_tfjob_runs_multiworker_mirrored():
    job = _one(render(K8S / "training" / "multiworker"), "TFJob")
    assert job["apiVersion"] == "kubeflow.org/v1"
    replicas = job["spec"]["tfReplicaSpecs"]
    assert set(replicas) <= {"Chief", "Worker", "PS", "Evaluator", "Master"} and "Worker" in replicas
    worker = replicas["Worker"]
    assert worker["replicas"] >= 2
    assert worker["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
    c = worker["template"]["spec"]["containers"][0]
    assert c["name"] == "tensorflow", "the Training Operator looks for the container named tensorflow"
    args = _train_args(c["command"] + c["args"])
    assert args.strategy == "multiworker"
    assert args.metrics_port == 9400


@pytest.mark.parametrize("kind,directory", [("MPIJob", "horovod"), ("TFJob", "multiworker")])
def test_training_pods_request_gpus_and_use_workload_identity(kind, directory):
    job = _one(render(K8S / "training" / directory), kind)
    for label, template in _pod_templates(job):
        pod = template["spec"]
        assert pod["serviceAccountName"] == "medsynth-trainer", label
        env = {e["name"]: e.get("value") for c in pod["containers"] for e in c.get("env", [])}
        assert not any("CREDENTIALS" in k or "KEY" in k for k in env), f"{label}: credentials in env"
        if label.endswith("Worker"):
            limits = pod["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), label
            assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"]), (
                f"{label}: NCCL needs a memory-backed /dev/shm"
            )
        for c in pod["containers"]:
            # `$(RUNS_ROOT)` in args must be defined in the same container's env, or kubelet leaves it as is.
            for ref in re.findall(r"\$\((\w+)\)", " ".join(c.get("args", []))):
                assert ref in {e["name"] for e in c.get("env", [])}, f"{label}: $({ref}) is not in env"


# --- base: accounts and RBAC -----------------------------------------------------------------


def _can(objs: list[dict], sa: tuple[str, str], namespace: str, group: str, resource: str, verb: str,
         name: str | None = None) -> bool:
    """What the API server's RBAC authorizer answers for service account `sa` = (namespace, name)
    doing `verb` on `resource` (named `name`) in `namespace`, given these Roles and RoleBindings."""
    roles = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objs if o["kind"] == "Role"}
    for b in objs:
        if b["kind"] != "RoleBinding" or b["metadata"].get("namespace") != namespace:
            continue
        bound = any(
            s["kind"] == "ServiceAccount" and (s.get("namespace", namespace), s["name"]) == sa
            for s in b.get("subjects", [])
        )
        role = roles.get((namespace, b["roleRef"]["name"])) if b["roleRef"]["kind"] == "Role" else None
        if not bound or role is None:
            continue
        for rule in role["rules"]:
            if (
                group in rule.get("apiGroups", [])
                and resource in rule.get("resources", [])
                and verb in rule.get("verbs", [])
                and (not rule.get("resourceNames") or name in rule["resourceNames"])
            ):
                return True
    return False


# What every pod of a KFP v2 run does with the run's service account (driver, launcher, Argo's
# executor), as KFP's own `pipeline-runner` role grants it: (group, resource, verb, name).
KFP_V2_POD_NEEDS = [
    ("", "configmaps", "get", "kfp-launcher"),  # driver and launcher; a Forbidden fails the task
    ("", "configmaps", "watch", "kfp-launcher"),
    ("argoproj.io", "workflowtaskresults", "create", None),  # Argo >= 3.4 records outputs so
    ("argoproj.io", "workflowtaskresults", "patch", None),
    ("", "pods", "get", None),  # the root driver lists and reads the run's pods
    ("", "pods", "list", None),
    ("", "pods", "watch", None),
    ("", "pods/log", "get", None),
]
# What the multi-node launch task does in the job namespace (medsynth/cluster/).
LAUNCH_NEEDS = [
    ("kubeflow.org", plural, verb, None)
    for plural in ("mpijobs", "tfjobs")
    for verb in ("create", "list", "watch", "delete")
]
PIPELINE_SA = "medsynth-pipeline"


def _platform(*extra: str) -> list[dict]:
    return [o for d in ("overlays/gcp", *extra) for o in render(K8S / d)]


@pytest.mark.parametrize(
    "mode,extra,run_namespace",
    [
        ("multi-user", "overlays/gcp/multi-user", "medsynth"),
        ("standalone", "overlays/gcp/standalone", "kubeflow"),
    ],
)
def test_the_run_service_account_may_do_what_kfp_v2_pods_and_the_launcher_do(mode, extra, run_namespace):
    objs = _platform(extra)
    sa = (run_namespace, PIPELINE_SA)
    accounts = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs if o["kind"] == "ServiceAccount"
    }
    assert sa in accounts, f"{mode}: runs use {sa}, which does not exist"
    assert accounts[sa]["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
        ".iam.gserviceaccount.com"
    ), "Workload Identity: the run's account names a Google service account"
    for need in KFP_V2_POD_NEEDS:
        assert _can(objs, sa, run_namespace, *need), f"{mode}: {sa} cannot {need} in {run_namespace}"
    for need in LAUNCH_NEEDS:  # jobs go to the pipeline's `namespace` parameter, medsynth
        assert _can(objs, sa, "medsynth", *need), f"{mode}: {sa} cannot {need} in medsynth"
    assert not _can(objs, sa, run_namespace, "", "secrets", "get", "anything"), "no Secret is needed"
    granted = [(r, v) for o in objs if o["kind"] == "Role" for rule in o["rules"]
               for r in rule["resources"] for v in rule["verbs"]]
    assert not any("*" in (r, v) for r, v in granted), "no wildcards"


def test_the_rbac_check_catches_a_missing_rule():
    objs = _platform()
    sa = ("medsynth", PIPELINE_SA)
    assert _can(objs, sa, "medsynth", "argoproj.io", "workflowtaskresults", "create")
    stripped = json.loads(json.dumps(objs))
    for o in stripped:
        if o["kind"] == "Role":
            o["rules"] = [r for r in o["rules"] if "argoproj.io" not in r["apiGroups"]]
    assert not _can(stripped, sa, "medsynth", "argoproj.io", "workflowtaskresults", "create")
    assert not _can(objs, sa, "medsynth", "", "configmaps", "get", "other-config")  # resourceNames hold
    assert not _can(objs, ("default", PIPELINE_SA), "medsynth", "kubeflow.org", "tfjobs", "create")


def test_training_pods_run_as_the_trainer_account_and_serving_as_its_own():
    objs = render(K8S / "base")
    sas = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    assert sas == {"medsynth-pipeline", "medsynth-trainer", "medsynth-serving"}
    for o in objs:
        if o["kind"] == "ServiceAccount":
            google = o["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
            assert google.endswith(".iam.gserviceaccount.com"), o["metadata"]["name"]


def test_namespaces_never_overwrite_a_profiles_labels():
    # In multi-user Kubeflow the Profile controller owns the namespace: app.kubernetes.io/part-of is
    # kubeflow-profile there, and an apply must only add the Pod Security labels.
    for directory in KUSTOMIZATIONS:
        for obj in render(directory):
            if obj["kind"] == "Namespace":
                labels = obj["metadata"].get("labels", {})
                assert all(k.startswith("pod-security.kubernetes.io/") for k in labels), (directory, labels)


# --- Istio (multi-user Kubeflow) --------------------------------------------------------------


def _operation_matches(op: dict, port: int, method: str, path: str) -> bool:
    def paths_match(patterns: list[str]) -> bool:
        return any(p == path or (p.endswith("*") and path.startswith(p[:-1])) or
                   (p.startswith("*") and path.endswith(p[1:])) for p in patterns)

    return (
        ("ports" not in op or str(port) in op["ports"])
        and ("methods" not in op or method in op["methods"])
        and ("paths" not in op or paths_match(op["paths"]))
        and not any(k.startswith("not") for k in op)
    )


def _istio_allows(objs: list[dict], pod_labels: dict, port: int, method: str, path: str) -> bool:
    """Istio's decision for a plaintext request from outside the mesh (no principal, no namespace):
    a DENY that matches refuses it; with ALLOW policies present, one of their rules must match."""

    def rule_matches(rule: dict) -> bool:
        if rule.get("from") or rule.get("when"):  # identities and conditions a non-mesh client lacks
            return False
        ops = [t["operation"] for t in rule.get("to", [])]
        return not ops or any(_operation_matches(o, port, method, path) for o in ops)

    policies = [
        o for o in objs
        if o["kind"] == "AuthorizationPolicy" and _matches(o["spec"].get("selector", {}), pod_labels)
    ]
    if any(p["spec"].get("action") == "DENY" and any(map(rule_matches, p["spec"].get("rules", [{}])))
           for p in policies):
        return False
    allows = [p for p in policies if p["spec"].get("action", "ALLOW") == "ALLOW"]
    return not allows or any(rule_matches(r) for p in allows for r in p["spec"].get("rules", []))


def _serving_requests(objs: list[dict]) -> list[tuple[str, int, str, str]]:
    """(who, port, method, path) of every client the serving objects expect: Prometheus by the
    PodMonitor, REST and gRPC clients by the NetworkPolicy's ports."""
    deploy = _one(objs, "Deployment", "tf-serving")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    monitor = _one(objs, "PodMonitor", "tf-serving")
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    requests = [("prometheus", ports[e["port"]], "GET", e["path"]) for e in endpoints]
    policy = _one(objs, "NetworkPolicy", "tf-serving")
    client_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    for port in sorted(client_ports):
        grpc = port == ports["grpc"]
        path = "/tensorflow.serving.PredictionService/Predict" if grpc else "/v1/models/generator:predict"
        requests.append(("client", port, "POST", path))
    return requests


def test_istio_lets_prometheus_and_other_namespaces_reach_tf_serving():
    objs = _platform("overlays/gcp/multi-user")
    labels = _one(objs, "Deployment", "tf-serving")["spec"]["template"]["metadata"]["labels"]
    # A Kubeflow profile's own ALLOW policy admits only mesh identities of the owner and KFP:
    owner = {"source": {"principals": ["cluster.local/ns/kubeflow/sa/ml-pipeline-ui"]}}
    profile = {"kind": "AuthorizationPolicy", "metadata": {"name": "ns-owner-access-istio"},
               "spec": {"rules": [{"from": [owner]}]}}
    peers = [o for o in objs if o["kind"] == "PeerAuthentication" and _matches(o["spec"]["selector"], labels)]
    requests = _serving_requests(objs)
    assert {who for who, *_ in requests} == {"prometheus", "client"} and len(requests) >= 3
    for who, port, method, path in requests:
        assert not _istio_allows([profile], labels, port, method, path), "the check must be able to fail"
        allowed = _istio_allows([profile, *objs], labels, port, method, path)
        assert allowed, f"{who}: {method} :{port}{path} denied"
        # and the sidecar takes their plaintext: mTLS is PERMISSIVE (or off) on that port
        (peer,) = peers
        assert peer["spec"]["portLevelMtls"][str(port)]["mode"] in ("PERMISSIVE", "DISABLE"), port
    assert not _istio_allows(objs, labels, 9090, "GET", "/"), "only the serving ports are opened"


@pytest.mark.parametrize("directory", ["training/horovod", "training/multiworker"])
def test_training_pods_opt_out_of_istio_sidecars(directory):
    # A sidecar never exits: a finished launcher or worker pod would keep running, and the job with it.
    for obj in render(K8S / directory):
        for label, template in _pod_templates(obj):
            annotations = template["metadata"].get("annotations", {})
            assert annotations.get("sidecar.istio.io/inject") == "false", label


# --- operators -------------------------------------------------------------------------------


# What training-operator v1.8.1's manifests/base/webhook/manifests.yaml registers a validator for, each
# with `failurePolicy: Fail`; the operator serves one only for the schemes it enables
# (cmd/training-operator.v1/main.go, pkg/webhooks/webhooks.go). MPIJob has no validator upstream.
UPSTREAM_VALIDATED_KINDS = {"mxjob", "paddlejob", "pytorchjob", "tfjob", "xgboostjob"}


def _training_operator_args() -> list[str]:
    doc = yaml.safe_load((K8S / "operators" / "training-operator" / "kustomization.yaml").read_text())
    patches = [yaml.safe_load(p["patch"]) for p in doc["patches"]]
    json_ops = [op for p in patches if isinstance(p, list) for op in p]
    (args,) = [op["value"] for op in json_ops if op["path"].endswith("/args")]
    return args


def test_training_operator_leaves_the_mpi_operators_crd_alone():
    # Both operators ship mpijobs.kubeflow.org; the Training Operator's (v1 only) would replace the MPI
    # Operator's v2beta1 CRD. Its kustomization must delete that CRD and not run the MPIJob scheme.
    doc = yaml.safe_load((K8S / "operators" / "training-operator" / "kustomization.yaml").read_text())
    (remote,) = doc["resources"]
    upstream = r"github\.com/kubeflow/training-operator\.git/manifests/overlays/standalone\?ref=v1\.8\.1"
    assert re.fullmatch(upstream, remote)
    patches = [yaml.safe_load(p["patch"]) for p in doc["patches"]]
    deletes = [p for p in patches if isinstance(p, dict) and p.get("$patch") == "delete"]
    assert [(p["kind"], p["metadata"]["name"]) for p in deletes] == [
        ("CustomResourceDefinition", "mpijobs.kubeflow.org")
    ]
    assert "--enable-scheme=mpijob" not in _training_operator_args()


def test_training_operator_serves_every_validator_its_webhook_configuration_registers():
    """A kind whose validator the operator does not serve is rejected cluster-wide (failurePolicy: Fail):
    every kind upstream's webhook configuration names must be an enabled scheme."""
    enabled = {a.split("=", 1)[1] for a in _training_operator_args() if a.startswith("--enable-scheme=")}
    assert not UPSTREAM_VALIDATED_KINDS - enabled, sorted(UPSTREAM_VALIDATED_KINDS - enabled)
    assert enabled <= UPSTREAM_VALIDATED_KINDS  # and no scheme it does not know


def test_the_guide_patches_an_existing_kubeflow_operator_with_the_same_schemes():
    """Beside full Kubeflow the guide does not apply the overlay; it turns off the MPIJob scheme of
    Kubeflow's own operator with the same list of schemes."""
    guide = (ROOT / "docs" / "cluster.md").read_text()
    command = r"kubectl -n kubeflow patch deployment training-operator --type=json -p '(.*?)'"
    (patch,) = re.findall(command, guide)
    (op,) = json.loads(patch)
    assert op["path"] == "/spec/template/spec/containers/0/args"
    assert op["value"] == _training_operator_args()


# --- monitoring ------------------------------------------------------------------------------


def test_trainer_podmonitor_finds_the_metrics_port_of_training_pods():
    monitor = _one(render(K8S / "monitoring"), "PodMonitor", "medsynth-trainer")
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e.get("port") for e in endpoints)
    matched = 0
    for directory in ("horovod", "multiworker"):
        for obj in render(K8S / "training" / directory):
            for _, template in _pod_templates(obj):
                if not _matches(monitor["spec"]["selector"], template["metadata"]["labels"]):
                    continue
                ports = {
                    p["name"]: p["containerPort"]
                    for c in template["spec"]["containers"]
                    for p in c.get("ports", [])
                }
                if "metrics" in ports:
                    matched += 1
                    assert ports["metrics"] == 9400
    assert matched >= 2, "no training pod exposes the port the PodMonitor scrapes"


def test_the_pipeline_training_tasks_are_scraped_wherever_runs_execute():
    # The labels and the port come from medsynth/cluster/ (tests/test_pipeline.py checks the
    # compiled tasks carry them); pipeline pods run in RUN_NAMESPACE: medsynth or kubeflow.
    from medsynth import cluster

    monitor = _one(render(K8S / "monitoring"), "PodMonitor", "medsynth-trainer-kfp")
    assert set(monitor["spec"]["namespaceSelector"]["matchNames"]) == {"medsynth", "kubeflow"}
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": cluster.LABELS["app.kubernetes.io/name"],
        "medsynth.io/role": cluster.KFP_TASK_ROLE,
    }
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and "port" not in endpoint  # KFP pods declare no ports
    keep = [r for r in endpoint["relabelings"] if r.get("action") == "keep"]
    container = ["__meta_kubernetes_pod_container_name"]
    assert [(r["sourceLabels"], r["regex"]) for r in keep] == [(container, "main")]  # Argo's main container
    address = next(r for r in endpoint["relabelings"] if r.get("targetLabel") == "__address__")
    assert address["replacement"] == f"$1:{cluster.METRICS_PORT}"


def _dashboard() -> dict:
    cm = _one(render(K8S / "monitoring"), "ConfigMap", "medsynth-grafana-dashboard")
    assert cm["metadata"]["labels"].get("grafana_dashboard") == "1", (
        "Grafana's sidecar finds dashboards by label"
    )
    (text,) = cm["data"].values()
    return json.loads(text)


def _exprs(dashboard: dict) -> list[str]:
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    return out


def test_dashboard_covers_training_and_serving_metrics():
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["panels"]
    text = "\n".join(_exprs(dashboard))
    # DESIGN §5 telemetry and issue 5's server metrics, plus TF Serving's own exporter names.
    for metric in (
        "medsynth_train_steps_total",
        "medsynth_train_images_total",
        "medsynth_train_loss",
        "medsynth_train_d_output",
        "medsynth_train_step_seconds_bucket",
        "medsynth_train_data_wait_seconds",
        "medsynth_serve_requests_total",
        "medsynth_serve_request_seconds_bucket",
        "medsynth_serve_images_total",
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency_bucket",
    ):
        assert metric in text, f"no dashboard panel shows {metric}"
    for p in dashboard["panels"]:
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['title']!r} has no query"


def test_dashboard_queries_are_valid_promql(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    exprs = _exprs(_dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {
                        "record": f"medsynth:dashboard_query_{i}",
                        "expr": e.replace("$__rate_interval", "5m").replace("$model", "x"),
                    }
                    for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # And promtool does reject a broken query, so the check above means something.
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x:y", "expr": "rate(x[5m]"}]}]})
    )
    assert (
        subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, check=False).returncode
        != 0
    )


# --- the gcp overlay -------------------------------------------------------------------------


def test_gcp_overlay_applies_every_setting(tmp_path):
    # Render a copy of k8s/ with distinctive settings: every placeholder must be gone and every value land.
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    settings = {
        "PROJECT_ID": "proj-x1",
        "REGISTRY_HOST": "europe-west4-docker.pkg.dev",
        "BUCKET": "bucket-x1",
        "PIPELINE_GSA": "pipe-x1@proj-x1.iam.gserviceaccount.com",
        "SERVING_GSA": "serve-x1@proj-x1.iam.gserviceaccount.com",
        "GPU_TYPE": "nvidia-h100-80gb",
    }
    env_file = copy / "overlays" / "gcp" / "settings" / "settings.env"
    shipped = dict(line.split("=", 1) for line in env_file.read_text().split())
    assert set(shipped) == set(settings), "settings.env keys changed: update this test and docs/cluster.md"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))

    rendered = {
        name: _render_text(str(copy / "overlays" / "gcp" / name))
        for name in ("", "horovod", "multiworker", "standalone", "multi-user")
    }
    for name, text in rendered.items():
        assert "YOUR_" not in text, f"overlays/gcp/{name}: a placeholder survived:\n" + "\n".join(
            line for line in text.splitlines() if "YOUR_" in line
        )
        assert "medsynth-gcp-settings" not in text, "the settings ConfigMap is local-config, never applied"

    platform = [d for d in yaml.safe_load_all(rendered[""]) if d]
    sas = {
        o["metadata"]["name"]: o["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        for o in platform
        if o["kind"] == "ServiceAccount"
    }
    assert sas == {
        "medsynth-pipeline": settings["PIPELINE_GSA"],
        "medsynth-trainer": settings["PIPELINE_GSA"],
        "medsynth-serving": settings["SERVING_GSA"],
    }
    # standalone KFP: the run's account in `kubeflow` maps to the same Google service account
    standalone = [d for d in yaml.safe_load_all(rendered["standalone"]) if d]
    (meta,) = [d["metadata"] for d in standalone if d["kind"] == "ServiceAccount"]
    assert meta["namespace"] == "kubeflow"
    assert meta["annotations"]["iam.gke.io/gcp-service-account"] == settings["PIPELINE_GSA"]
    (config,) = [
        o
        for o in platform
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("tf-serving-config")
    ]
    assert 'base_path: "gs://bucket-x1/models/generator"' in config["data"]["models.config"]
    # the serving placeholder goes to that repository, on the base image of the same registry
    placeholder = _one(platform, "Job", "tf-serving-placeholder")
    (c,) = placeholder["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"europe-west4-docker.pkg.dev/proj-x1/medsynth/base:{__version__}"
    env = {e["name"]: e["value"] for e in c["env"]}
    args = dict(zip(c["args"][::2], c["args"][1::2], strict=True))
    assert args["--model-repository"] == "$(MODEL_REPOSITORY)"
    base_path = f'{env["MODEL_REPOSITORY"]}/{args["--model-name"]}'
    assert f'base_path: "{base_path}"' in config["data"]["models.config"]
    assert not any(o["kind"] in ("MPIJob", "TFJob") for o in platform), (
        "applying the platform must not start a run"
    )

    trainer = f"europe-west4-docker.pkg.dev/proj-x1/medsynth/trainer:{__version__}"
    assert trainer == images.image(
        "trainer", {images.REGISTRY_ENV: "europe-west4-docker.pkg.dev/proj-x1/medsynth"}
    )
    for name, kind in (("horovod", "MPIJob"), ("multiworker", "TFJob")):
        job = _one([d for d in yaml.safe_load_all(rendered[name]) if d], kind)
        for label, template in _pod_templates(job):
            for c in template["spec"]["containers"]:
                assert c["image"] == trainer, f"{name} {label}"
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                if "RUNS_ROOT" in env:
                    assert env["RUNS_ROOT"] == "gs://bucket-x1/runs"
            if label.endswith("Worker"):
                assert template["spec"]["nodeSelector"] == {
                    "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"
                }


def test_gcp_overlay_tags_medsynth_images_with_the_package_version():
    component = yaml.safe_load((K8S / "overlays" / "gcp" / "settings" / "kustomization.yaml").read_text())
    tags = {i["name"]: i["newTag"] for i in component["images"]}
    assert tags == {f"{images.DEFAULT_REGISTRY}/{n}": __version__ for n in images.IMAGE_NAMES}
