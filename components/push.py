"""push: copy the exported model into the served repository only if the quality gate passes."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Input, Markdown, Model, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def push(
    model: Input[Model],
    metrics_path: str,
    model_repository: str,
    model_name: str,
    metric: str,
    margin: float,
    decision: Output[Markdown],
    utility_report: str = "",
    require_utility: bool = False,
) -> NamedTuple("PushOutputs", pushed=bool, version=int):
    from medsynth.pipeline_steps import push_step

    return push_step(model, metrics_path, model_repository, model_name, metric, margin, decision,
                     utility_report, require_utility)
