"""Training on Kubernetes: GPU settings of the pipeline's `train` task, and multi-node jobs.

One node (1–8 GPUs) is the pipeline's own `train` task: `configure_gpu_task` asks for the GPUs,
pins the task to the GPU node pool (node selector, tolerations), gives NCCL a memory-backed
/dev/shm, and mounts credentials from a Kubernetes secret when the cluster has no Workload
Identity.

Several nodes: `launch_training_job` creates an MPIJob (Horovod, MPI Operator) or a TFJob
(MultiWorkerMirroredStrategy, Training Operator) through the Kubernetes API and follows its
status until it succeeds or fails. The pods run the trainer image the pipeline was compiled with
(an input of the task: the launcher's own pod cannot know the registry) and `medsynth train` with
the flags `train_argv` makes from the same `TrainConfig` the single-pod path uses, so both paths
train the same thing; the job specs have the shape of k8s/training/ (tested).
A retried launcher finds its job by name (derived from `--out`) and follows it instead of
starting a second one; training itself resumes from the checkpoints in the bucket. A cancelled
run does not leave the job behind: the job is owned by the launcher's pod (when both share a
namespace), and SIGTERM makes the launcher delete it.

Every pipeline task gets CPU/memory requests and limits (`size_task`); training pods opt out of
Istio sidecars (a sidecar never exits, so a finished job or task pod would hang) and carry the
labels k8s/monitoring's PodMonitors select on.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from medsynth.errors import ConfigError, MedsynthError
from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")

GROUP = "kubeflow.org"
KINDS = {
    # kind: (apiVersion version, plural, strategy its pods run)
    "mpijob": ("v2beta1", "mpijobs", "horovod"),
    "tfjob": ("v1", "tfjobs", "multiworker"),
}
NAMESPACE = "medsynth"
SERVICE_ACCOUNT = "medsynth-trainer"  # k8s/base/serviceaccounts.yaml: Workload Identity, bucket access
METRICS_PORT = 9400  # k8s/monitoring's PodMonitor scrapes this port
SSH_PORT = 2222  # images/trainer/sshd_config
HOME = "/home/medsynth"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
SPOT_TOLERATION = {
    "key": "cloud.google.com/gke-spot",
    "operator": "Equal",
    "value": "true",
    "effect": "NoSchedule",
}
GPU_NODE_LABEL = "cloud.google.com/gke-accelerator"
LABELS = {"app.kubernetes.io/name": "medsynth-trainer", "app.kubernetes.io/component": "training"}
# The pipeline's own training pods: k8s/monitoring/podmonitor-kfp.yaml scrapes them by this role.
KFP_TASK_ROLE = "kfp-task"
# In an Istio-injected (Kubeflow profile) namespace a sidecar would keep job and task pods running.
POD_ANNOTATIONS = {"sidecar.istio.io/inject": "false"}
METRICS_PORT_ENV = "MEDSYNTH_METRICS_PORT"  # read by pipeline_steps.train_step
CREDENTIALS_MOUNT = "/var/secrets/google"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
# Where the launch task finds its own pod (downward API), to own the job it creates.
POD_ENV = {"name": "MEDSYNTH_POD_NAME", "uid": "MEDSYNTH_POD_UID", "namespace": "MEDSYNTH_POD_NAMESPACE"}


@dataclass(frozen=True)
class PodSize:
    """CPU/memory requests and limits of one pipeline task's pod."""

    cpu: str
    memory: str
    cpu_limit: str
    memory_limit: str


# Requests fit the smallest node each task runs on (a g2-standard-8 with one L4 for training); the
# training limit leaves room for the 8 GiB memory-backed /dev/shm, which counts against it.
TASK_SIZES = {
    "prepare": PodSize("2", "8Gi", "4", "16Gi"),
    "evaluate": PodSize("2", "8Gi", "4", "16Gi"),
    "compare": PodSize("1", "2Gi", "2", "4Gi"),
    "export": PodSize("1", "4Gi", "2", "8Gi"),
    "push": PodSize("1", "4Gi", "2", "8Gi"),
    "launch": PodSize("250m", "512Mi", "1", "1Gi"),
    "train": PodSize("4", "16Gi", "16", "48Gi"),
}

# TrainConfig field -> `medsynth train` flag. Fields not here have no flag and must keep their defaults.
_FLAGS = {
    "data": "--data",
    "out": "--out",
    "image_size": "--image-size",
    "steps": "--steps",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "checkpoint_every": "--checkpoint-every",
    "sample_every": "--sample-every",
    "keep_checkpoints": "--keep-checkpoints",
    "init_from": "--init-from",
    "backbone": "--backbone",
    "backbone_weights": "--backbone-weights",
    "backbone_mode": "--backbone-mode",
    "d_head": "--d-head",
    "loss": "--loss",
    "beta_1": "--beta-1",
    "g_ema_kimg": "--g-ema-kimg",
    "latent_dim": "--latent-dim",
    "generator_width": "--generator-width",
    "generator_upsampling": "--generator-upsampling",
    "r1_gamma": "--r1-gamma",
    "batch_norm": "--batch-norm",
    "lr_g": "--lr-g",
    "lr_d": "--lr-d",
    "augment": "--augment",
    "d_augment": "--d-augment",
    "strategy": "--strategy",
    "gpus": "--gpus",
    "mixed_precision": "--mixed-precision",
    "xla": "--xla",
    "deterministic": "--deterministic",
    "metrics_port": "--metrics-port",
    "pushgateway": "--pushgateway",
    "log_every": "--log-every",
}


# --------------------------------------------------------------------------------- one pod: the KFP task


@dataclass(frozen=True)
class Placement:
    """Where the pipeline's training runs: fixed at compile time, since it shapes the pods' specs.

    `gpu_type` (GKE accelerator label) becomes a node selector, `spot` a toleration for spot nodes,
    `credentials_secret` a mounted service-account key (leave it None under Workload Identity);
    `multi_node` ("mpijob" or "tfjob") runs the final training as a multi-node job that the
    pipeline launches and follows instead of in the task's own pod.
    """

    gpu_type: str | None = None
    spot: bool = False
    credentials_secret: str | None = None
    multi_node: str | None = None

    def __post_init__(self) -> None:
        if self.multi_node is not None and self.multi_node not in KINDS:
            raise ConfigError(
                f"unknown multi-node job kind {self.multi_node!r}; use one of: {', '.join(KINDS)}"
            )

    def on_gpus(self, task: Any, gpus: Any) -> Any:
        return configure_gpu_task(
            task, gpus, gpu_type=self.gpu_type, spot=self.spot, credentials_secret=self.credentials_secret
        )

    def job_inputs(self) -> dict[str, Any]:
        """What the multi-node launch task needs of the placement: its job pods get the same."""
        return {
            "kind": self.multi_node,
            "gpu_type": self.gpu_type or "",
            "spot": self.spot,
            "credentials_secret": self.credentials_secret or "",
        }


def size_task(task: Any, step: str) -> Any:
    """Give a pipeline task the requests and limits of TASK_SIZES[step]."""
    if step not in TASK_SIZES:
        raise ConfigError(f"no pod size for pipeline step {step!r}; known: {', '.join(TASK_SIZES)}")
    size = TASK_SIZES[step]
    task.set_cpu_request(size.cpu).set_cpu_limit(size.cpu_limit)
    return task.set_memory_request(size.memory).set_memory_limit(size.memory_limit)


def configure_launch_task(task: Any) -> Any:
    """The multi-node launch task: sized, and told its own pod (name, uid, namespace) by the
    downward API, so the job it creates is owned by it and deleted with it."""
    from kfp import kubernetes

    for field, env in POD_ENV.items():
        kubernetes.use_field_path_as_env(task, env_name=env, field_path=f"metadata.{field}")
    return size_task(task, "launch")


def configure_gpu_task(
    task: Any,
    gpus: Any,
    *,
    accelerator: str = GPU_RESOURCE,
    gpu_type: str | None = None,
    spot: bool = False,
    credentials_secret: str | None = None,
    shm_size: str = "8Gi",
) -> Any:
    """Put a pipeline training task on GPU nodes: `gpus` GPUs, the GPU node pool, /dev/shm for NCCL,
    CPU/memory (TASK_SIZES["train"]), no Istio sidecar, Prometheus metrics and the trainer labels.

    `gpu_type` is GKE's accelerator label (e.g. nvidia-l4) for a node selector; `spot` tolerates
    spot/preemptible nodes (training resumes from checkpoints). Credentials: with Workload Identity
    (k8s/base) nothing is needed; otherwise `credentials_secret` names a secret with a `key.json`
    service-account key, mounted read-only and named by GOOGLE_APPLICATION_CREDENTIALS.
    """
    from kfp import kubernetes

    size_task(task, "train")
    for key, value in POD_ANNOTATIONS.items():
        kubernetes.add_pod_annotation(task, annotation_key=key, annotation_value=value)
    for key, value in {**LABELS, "medsynth.io/role": KFP_TASK_ROLE}.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)
    task.set_env_variable(METRICS_PORT_ENV, str(METRICS_PORT))
    task.set_accelerator_type(accelerator).set_accelerator_limit(gpus)
    if gpu_type:
        kubernetes.add_node_selector(task, label_key=GPU_NODE_LABEL, label_value=gpu_type)
    for toleration in [GPU_TOLERATION] + ([SPOT_TOLERATION] if spot else []):
        kubernetes.add_toleration(task, **toleration)
    if shm_size:
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=shm_size
        )
    if credentials_secret:
        kubernetes.use_secret_as_volume(task, secret_name=credentials_secret, mount_path=CREDENTIALS_MOUNT)
        task.set_env_variable(CREDENTIALS_ENV, f"{CREDENTIALS_MOUNT}/key.json")
    return task


# ------------------------------------------------------------------------------------ several nodes: jobs


def train_argv(cfg: TrainConfig) -> list[str]:
    """`medsynth train` flags that rebuild `cfg` exactly (the CLI parses them back into the same config)."""
    default = TrainConfig(data=cfg.data, out=cfg.out)
    argv: list[str] = []
    for f in fields(TrainConfig):
        value, flag = getattr(cfg, f.name), _FLAGS.get(f.name)
        if flag is None:
            if value != getattr(default, f.name):
                raise ConfigError(
                    f"TrainConfig.{f.name}={value!r} has no `medsynth train` flag; keep its default"
                )
            continue
        if value is None or (isinstance(value, bool) and not value):
            continue
        argv += [flag] if isinstance(value, bool) else [flag, str(value)]
    return argv


def job_name(cfg: TrainConfig, kind: str) -> str:
    """Stable per run: a retried launcher finds the job it created before."""
    digest = hashlib.sha256(f"{kind}:{cfg.out}".encode()).hexdigest()[:10]
    return f"medsynth-train-{kind}-{digest}"


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _volumes(shm: str | None, tmp: str, credentials_secret: str | None) -> tuple[list[dict], list[dict]]:
    volumes = [{"name": "tmp", "emptyDir": {"sizeLimit": tmp}}]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}]
    if shm:
        volumes += [
            {"name": "keras-cache", "emptyDir": {"sizeLimit": "2Gi"}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}},
        ]
        mounts += [
            {"name": "keras-cache", "mountPath": f"{HOME}/.keras"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ]
    if credentials_secret:  # every pod: horovodrun forwards the launcher's environment to the ranks
        volumes.append({"name": "gcp-credentials", "secret": {"secretName": credentials_secret}})
        mounts.append({"name": "gcp-credentials", "mountPath": CREDENTIALS_MOUNT, "readOnly": True})
    return volumes, mounts


def _env(credentials_secret: str | None) -> list[dict[str, str]]:
    env = [{"name": "NCCL_DEBUG", "value": "WARN"}]
    if credentials_secret:
        env.append({"name": CREDENTIALS_ENV, "value": f"{CREDENTIALS_MOUNT}/key.json"})
    return env


def _pod(role: str, container: dict[str, Any], volumes: tuple[list[dict], list[dict]]) -> dict[str, Any]:
    """A job pod template: non-root, no Istio sidecar, the trainer labels, the medsynth-trainer account."""
    vols, mounts = volumes
    spec: dict[str, Any] = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "securityContext": _pod_security(),
        "containers": [{**container, "securityContext": _container_security(), "volumeMounts": mounts}],
        "volumes": vols,
    }
    meta = {"labels": {**LABELS, "medsynth.io/role": role}, "annotations": dict(POD_ANNOTATIONS)}
    return {"metadata": meta, "spec": spec}


def _gpu_pod(
    container: dict[str, Any], gpu_type: str | None, spot: bool, credentials_secret: str | None
) -> dict[str, Any]:
    pod = _pod("worker", container, _volumes("16Gi", "50Gi", credentials_secret))
    pod["spec"].update(
        {
            "tolerations": [GPU_TOLERATION] + ([SPOT_TOLERATION] if spot else []),
            # Preemption: SIGTERM makes `medsynth train` write a checkpoint first.
            "terminationGracePeriodSeconds": 120,
        }
    )
    if gpu_type:
        pod["spec"]["nodeSelector"] = {GPU_NODE_LABEL: gpu_type}
    return pod


def _resources(gpus: int) -> dict[str, Any]:
    cpu, mem = 2 * gpus, 12 * gpus
    return {
        "requests": {"cpu": str(cpu), "memory": f"{mem}Gi", GPU_RESOURCE: str(gpus)},
        "limits": {"cpu": str(2 * cpu), "memory": f"{2 * mem}Gi", GPU_RESOURCE: str(gpus)},
    }


_PORTS = [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}]


def check_ranks(batch_size: int, workers: int, gpus_per_worker: int) -> int:
    """The number of ranks (one per GPU); the global batch must split evenly over them."""
    if workers < 1 or gpus_per_worker < 1:
        raise ConfigError(f"workers ({workers}) and GPUs per worker ({gpus_per_worker}) must be >= 1")
    ranks = workers * gpus_per_worker
    if batch_size % ranks:
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {ranks} GPUs ({workers} workers x "
            f"{gpus_per_worker}); use a multiple of {ranks}"
        )
    return ranks


def owner_reference(namespace: str, env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """An ownerReference to the launch task's own pod, so deleting the run's pods deletes the job.

    None outside a pipeline pod, or when the job goes to another namespace than the pod's (an owner
    must share its dependents' namespace, else the garbage collector deletes them at once).
    """
    env = os.environ if env is None else env
    name, uid, pod_ns = (env.get(POD_ENV[k], "") for k in ("name", "uid", "namespace"))
    if not (name and uid) or pod_ns != namespace:
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "blockOwnerDeletion": False}


def job_manifest(
    kind: str,
    cfg: TrainConfig,
    workers: int,
    gpus_per_worker: int,
    image: str,
    name: str | None = None,
    namespace: str = NAMESPACE,
    gpu_type: str | None = None,
    spot: bool = False,
    credentials_secret: str | None = None,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The MPIJob or TFJob that runs `cfg` on `workers` pods of `gpus_per_worker` GPUs each."""
    kind = _kind(kind)
    version, _, strategy = KINDS[kind]
    if not image:
        raise ConfigError("no trainer image given: pass the image the pipeline was compiled with")
    ranks = check_ranks(cfg.batch_size, workers, gpus_per_worker)
    cfg = TrainConfig(
        **{**cfg.to_dict(), "strategy": strategy, "metrics_port": cfg.metrics_port or METRICS_PORT}
    )
    argv = train_argv(cfg)
    name = name or job_name(cfg, kind)
    labels = {**LABELS, "app.kubernetes.io/part-of": "medsynth"}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels}
    if owner:
        meta["ownerReferences"] = [owner]
    run_policy = {"cleanPodPolicy": "Running", "backoffLimit": 6, "ttlSecondsAfterFinished": 86400}
    env = _env(credentials_secret)
    if kind == "tfjob":
        container = {
            "name": "tensorflow",  # the Training Operator finds the training container by this name
            "image": image,
            "command": ["medsynth", "train"],
            "args": argv,
            "ports": [{"name": "tfjob-port", "containerPort": SSH_PORT, "protocol": "TCP"}, *_PORTS],
            "env": env,
            "resources": _resources(gpus_per_worker),
        }
        worker = {
            "replicas": workers,
            "restartPolicy": "OnFailure",
            "template": _gpu_pod(container, gpu_type, spot, credentials_secret),
        }
        return {
            "apiVersion": f"{GROUP}/{version}",
            "kind": "TFJob",
            "metadata": meta,
            "spec": {"runPolicy": run_policy, "tfReplicaSpecs": {"Worker": worker}},
        }
    launcher_cmd = [
        "--gloo",
        "-np",
        str(ranks),
        "--hostfile",
        "/etc/mpi/hostfile",
        "-p",
        str(SSH_PORT),
        "--network-interface",
        "eth0",
        "medsynth",
        "train",
        *argv,
    ]
    launcher_container = {
        "name": "launcher",
        "image": image,
        "command": ["horovodrun"],
        "args": launcher_cmd,
        # horovodrun forwards the launcher's environment to every rank.
        "env": env,
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}},
    }
    launcher = {
        "replicas": 1,
        "restartPolicy": "OnFailure",
        "template": _pod("launcher", launcher_container, _volumes(None, "1Gi", credentials_secret)),
    }
    worker_container = {
        "name": "worker",
        "image": image,
        "command": ["/usr/sbin/sshd"],
        "args": ["-De", "-f", f"{HOME}/.sshd_config"],
        "ports": [{"name": "ssh", "containerPort": SSH_PORT, "protocol": "TCP"}, *_PORTS],
        "resources": _resources(gpus_per_worker),
    }
    worker = {
        "replicas": workers,
        "restartPolicy": "OnFailure",
        "template": _gpu_pod(worker_container, gpu_type, spot, credentials_secret),
    }
    return {
        "apiVersion": f"{GROUP}/{version}",
        "kind": "MPIJob",
        "metadata": meta,
        "spec": {
            "slotsPerWorker": gpus_per_worker,
            "mpiImplementation": "OpenMPI",
            "sshAuthMountPath": f"{HOME}/.ssh",
            # Start the launcher once every worker runs: GPU nodes may take minutes to scale up, and
            # a launcher started earlier would spend its retries failing to reach them.
            "launcherCreationPolicy": "WaitForWorkersReady",
            "runPolicy": {**run_policy, "backoffLimit": 3},
            "mpiReplicaSpecs": {"Launcher": launcher, "Worker": worker},
        },
    }


def _kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in KINDS:
        raise ConfigError(
            f"unknown training job kind {kind!r}; use mpijob (Horovod) or tfjob (MultiWorkerMirrored)"
        )
    return k


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

    kind = _kind(kind)
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


def launch_step(
    kind: str,
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    run_name: str,
    backbone: str,
    image_size: int,
    steps: int,
    batch_size: int,
    backbone_weights: str,
    seed: int,
    workers: int,
    gpus_per_worker: int,
    image: str,
    namespace: str = NAMESPACE,
    gpu_type: str = "",
    spot: bool = False,
    credentials_secret: str = "",
    api_client: Any | None = None,
    poll_s: float = 15.0,
    d_augment: str = "auto",
    d_head: str = "auto",
    init_run: str = "",
) -> tuple[str]:
    """What the `launch_training_job` component does: the pipeline's `train` task, on several nodes."""
    from medsynth.pipeline_steps import task_train_config

    # the same place and settings the single-pod train task uses
    cfg = task_train_config(
        dataset_dir,
        storage_root,
        run_id,
        run_name,
        backbone,
        image_size,
        steps,
        batch_size,
        backbone_weights,
        seed,
        d_augment=d_augment,
        d_head=d_head,
        init_run=init_run,
    )
    owner = owner_reference(namespace)
    if owner is None:
        log.info("the job goes to namespace %s, not this pod's: cancelling relies on SIGTERM", namespace)
    launch_training_job(
        cfg,
        kind,
        workers,
        gpus_per_worker,
        image,
        namespace=namespace,
        gpu_type=gpu_type or None,
        spot=spot,
        credentials_secret=credentials_secret or None,
        owner=owner,
        api_client=api_client,
        poll_s=poll_s,
    )
    return (cfg.out,)


def parse_argv_config(argv: Sequence[str]) -> TrainConfig:
    """The TrainConfig that `medsynth train ARGV` builds (for tests and checks of job specs)."""
    from medsynth.cli import build_parser

    return TrainConfig.from_flags(build_parser().parse_args(["train", *argv]))
