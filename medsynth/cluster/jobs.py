"""The MPIJob / TFJob a multi-node training becomes: manifests shaped like k8s/training/ (tested)."""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from medsynth.cluster.settings import (
    CREDENTIALS_ENV,
    CREDENTIALS_MOUNT,
    GPU_NODE_LABEL,
    GPU_RESOURCE,
    GPU_TOLERATION,
    GROUP,
    HOME,
    KINDS,
    LABELS,
    METRICS_PORT,
    NAMESPACE,
    POD_ANNOTATIONS,
    POD_ENV,
    SERVICE_ACCOUNT,
    SPOT_TOLERATION,
    SSH_PORT,
    SSHD_COMMAND,
    TERMINATION_GRACE_S,
    WORKER_ENTRYPOINT,
)
from medsynth.errors import ConfigError
from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")


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
            # SIGTERM makes `medsynth train` write a checkpoint and exit (MPIJob: the worker's PID 1
            # hands it on); a spot preemption leaves about 15 s of this, a drain all of it.
            "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
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
    kind = job_kind(kind)
    version, _, strategy = KINDS[kind]
    if not image:
        raise ConfigError("no trainer image given: pass the image the pipeline was compiled with")
    ranks = check_ranks(cfg.batch_size, workers, gpus_per_worker)
    cfg = TrainConfig(
        **{**cfg.to_dict(), "strategy": strategy, "metrics_port": cfg.metrics_port or METRICS_PORT}
    )
    argv = cfg.to_argv()
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
        # PID 1 runs sshd and passes SIGTERM on to the ranks (sshd's session children), see worker.py
        "command": list(WORKER_ENTRYPOINT),
        "args": list(SSHD_COMMAND),
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


def job_kind(kind: str) -> str:
    k = str(kind).lower()
    if k not in KINDS:
        raise ConfigError(
            f"unknown training job kind {kind!r}; use mpijob (Horovod) or tfjob (MultiWorkerMirrored)"
        )
    return k
