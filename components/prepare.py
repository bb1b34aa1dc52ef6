"""prepare: source frames → de-identified, split, sharded data set (cached by content hash)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def prepare(
    dataset_uri: str,
    image_size: int,
    seed: int,
    storage_root: str,
    phantom_frames: int,
    dataset: Output[Dataset],
    preview: Output[HTML],
) -> NamedTuple("PrepareOutputs", dataset_dir=str):
    from medsynth.pipeline_steps import prepare_step

    return prepare_step(dataset_uri, image_size, seed, storage_root, phantom_frames, dataset, preview)
