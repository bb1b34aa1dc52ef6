"""Training on Kubernetes: GPU settings of the pipeline's `train` task, and multi-node jobs.

One node (1–8 GPUs) is the pipeline's own `train` task: `configure_gpu_task` asks for the GPUs,
pins the task to the GPU node pool (node selector, tolerations), gives NCCL a memory-backed
/dev/shm, and mounts credentials from a Kubernetes secret when the cluster has no Workload
Identity.

Several nodes: `follow.launch_training_job` creates an MPIJob (Horovod, MPI Operator) or a TFJob
(MultiWorkerMirroredStrategy, Training Operator) through the Kubernetes API and watches its
status (a `kubernetes.watch` stream, renewed every `poll_s`) until it succeeds or fails. The pods
run the trainer image the pipeline was compiled with (an input of the task: the launcher's own pod
cannot know the registry) and `medsynth train` with
the flags `TrainConfig.to_argv` makes from the same `TrainConfig` the single-pod path uses, so both paths
train the same thing; the job specs have the shape of k8s/training/ (tested).
A retried launcher finds its job by name (derived from `--out`) and follows it instead of
starting a second one; training itself resumes from the checkpoints in the bucket. A cancelled
run does not leave the job behind: the job is owned by the launcher's pod (when both share a
namespace), and SIGTERM makes the launcher delete it.

Every pipeline task gets CPU/memory requests and limits (`size_task`); training pods opt out of
Istio sidecars (a sidecar never exits, so a finished job or task pod would hang) and carry the
labels k8s/monitoring's PodMonitors select on.
"""

from medsynth.cluster.follow import JobOutcome, job_state, launch_training_job
from medsynth.cluster.jobs import check_ranks, job_manifest, job_name, owner_reference
from medsynth.cluster.placement import Placement, configure_gpu_task, configure_launch_task, size_task
from medsynth.cluster.settings import (
    KFP_TASK_ROLE,
    LABELS,
    METRICS_PORT,
    METRICS_PORT_ENV,
    NAMESPACE,
    POD_ANNOTATIONS,
    POD_ENV,
    SPOT_TOLERATION,
    TASK_SIZES,
)

__all__ = [
    "KFP_TASK_ROLE", "LABELS", "METRICS_PORT", "METRICS_PORT_ENV", "NAMESPACE", "POD_ANNOTATIONS", "POD_ENV",
    "SPOT_TOLERATION", "TASK_SIZES", "JobOutcome", "Placement", "check_ranks", "configure_gpu_task",
    "configure_launch_task", "job_manifest", "job_name", "job_state", "launch_training_job",
    "owner_reference", "size_task",
]
