"""train: the adversarial loop for one backbone; resumes from its own checkpoints on retry.

`init_run` (the final training: the winner's comparison run) is continued instead of started over.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Model, Output

from components.images import TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def train(
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    run_name: str,
    backbone: str,
    image_size: int,
    steps: int,
    batch_size: int,
    backbone_weights: str,
    strategy: str,
    seed: int,
    d_augment: str,
    d_head: str,
    model: Output[Model],
    metrics: Output[Metrics],
    samples: Output[HTML],
    init_run: str = "",
) -> NamedTuple("TrainOutputs", run_dir=str):
    from medsynth.pipeline_steps import TrainTask, train_step

    task = TrainTask(
        dataset_dir=dataset_dir,
        storage_root=storage_root,
        run_id=run_id,
        run_name=run_name,
        backbone=backbone,
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        backbone_weights=backbone_weights,
        seed=seed,
        strategy=strategy,
        d_augment=d_augment,
        d_head=d_head,
        init_run=init_run,
    )
    return train_step(task, model, metrics, samples)
