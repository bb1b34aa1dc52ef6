"""launch_training_job: the pipeline's `train` task on several nodes, as an MPIJob or a TFJob.

Runs on the CPU base image as the `medsynth-pipeline` service account (k8s/base/rbac.yaml lets it
create and follow kubeflow.org jobs); the job's pods run `image`, the trainer image named when the
pipeline was compiled, with the same `medsynth train` arguments as the single-pod `train` task.
See medsynth/cluster/ and medsynth.pipeline_steps.launch_step.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def launch_training_job(
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
    namespace: str = "medsynth",
    gpu_type: str = "",
    spot: bool = False,
    credentials_secret: str = "",
    d_augment: str = "auto",
    d_head: str = "auto",
    init_run: str = "",
    generator: str = "paper",
    max_minutes: float = 0.0,
    train_until: float = 0.0,
) -> NamedTuple("LaunchOutputs", run_dir=str):
    from medsynth.pipeline_steps import TrainTask, launch_step

    task = TrainTask.of(locals())  # every input named like a TrainTask field
    return launch_step(
        task,
        kind,
        workers,
        gpus_per_worker,
        image,
        namespace=namespace,
        gpu_type=gpu_type,
        spot=spot,
        credentials_secret=credentials_secret,
    )
