"""utility: do synthetic labelled frames make a key-point tracker better than real frames, classic
augmentation and self-training do? (Every arm of medsynth.utility, one report.)

Two components: `utility` trains generators and trackers, so it runs on the trainer image (CUDA) on a
GPU node; `utility_not_requested` is what the pipeline runs instead when `utility_seeds` = 0, on the
base image with no GPU, so a run that does not ask for the experiment scales up no GPU node for it.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components.images import BASE_IMAGE, TRAINER_IMAGE


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def utility(
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    image_size: int,
    n_real: list,
    n_synthetic: int,
    seeds: int,
    gan_steps: int,
    tracker_steps: int,
    metrics: Output[Metrics],
    table: Output[Markdown],
    pictures: Output[HTML],
) -> NamedTuple("UtilityOutputs", report_path=str):
    from medsynth.pipeline_steps import utility_step

    return utility_step(
        dataset_dir, storage_root, run_id, image_size, n_real, n_synthetic, seeds, gan_steps, tracker_steps,
        metrics, table, pictures,
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def utility_not_requested(
    table: Output[Markdown], pictures: Output[HTML]
) -> NamedTuple("UtilityOutputs", report_path=str):
    from medsynth.pipeline_steps import utility_not_requested as not_requested

    return not_requested(table, pictures)
