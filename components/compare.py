"""compare: rank the candidates' short runs by measured quality and name the winner (or stop the run
when every one collapsed and `if_all_collapsed` is `stop`)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Markdown, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def compare(
    storage_root: str,
    run_id: str,
    backbones: list,
    criterion: str,
    if_all_collapsed: str,
    table: Output[Markdown],
    pictures: Output[HTML],
) -> NamedTuple("CompareOutputs", winner=str):
    from medsynth.pipeline_steps import compare_step

    return compare_step(storage_root, run_id, backbones, criterion, table, pictures, if_all_collapsed)
