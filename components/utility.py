"""utility: does adding synthetic labelled frames to the real ones make a key-point tracker better?"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Metrics, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def utility(
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    image_size: int,
    n_real: list,
    n_synthetic: list,
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
