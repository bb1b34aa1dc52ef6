"""Names, ports, labels and pod sizes the cluster side agrees on with k8s/ and images/."""

from __future__ import annotations

from dataclasses import dataclass

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
# An MPIJob worker's PID 1: medsynth.cluster.worker runs sshd and hands SIGTERM on to the ranks, which
# sshd (their sessions' parent) would not: they would die with it, SIGKILLed, without a checkpoint.
WORKER_ENTRYPOINT = ["python", "-m", "medsynth.cluster.worker"]
SSHD_COMMAND = ["/usr/sbin/sshd", "-De", "-f", f"{HOME}/.sshd_config"]  # images/trainer/sshd_config
# Worker pods' grace period: a drain or scale-down waits this long for the checkpoint. A spot
# preemption gives less, whatever this says: GCE's notice is 30 s, and GKE's graceful node shutdown
# leaves non-system pods the first 15 s of it (best effort). docs/cluster.md §6.
TERMINATION_GRACE_S = 120
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
    "note": PodSize("250m", "1Gi", "1", "2Gi"),  # writes a line for the UI (utility not requested)
    "train": PodSize("4", "16Gi", "16", "48Gi"),
}

# TrainConfig field -> `medsynth train` flag. Fields not here have no flag and must keep their defaults.
