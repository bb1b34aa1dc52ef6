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
    generator: str = "paper",
    max_minutes: float = 0.0,
    train_until: float = 0.0,
) -> NamedTuple("TrainOutputs", run_dir=str):
    from medsynth.pipeline_steps import TrainTask, train_step

    task = TrainTask.of(locals())  # every input named like a TrainTask field
    return train_step(task, model, metrics, samples)
