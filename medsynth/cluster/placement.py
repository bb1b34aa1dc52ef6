"""Where a pipeline task runs: GPUs, node pools, spot nodes, credentials, sizes (compile time)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from medsynth.cluster.settings import (
    CREDENTIALS_ENV,
    CREDENTIALS_MOUNT,
    GPU_NODE_LABEL,
    GPU_RESOURCE,
    GPU_TOLERATION,
    KFP_TASK_ROLE,
    KINDS,
    LABELS,
    METRICS_PORT,
    METRICS_PORT_ENV,
    POD_ANNOTATIONS,
    POD_ENV,
    SPOT_TOLERATION,
    TASK_SIZES,
)
from medsynth.errors import ConfigError

log = logging.getLogger("medsynth")


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
