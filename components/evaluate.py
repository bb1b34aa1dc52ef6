"""evaluate: image-quality metrics of one run on a fixed, seeded set of frames."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Metrics, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(
    run_dir: str,
    dataset_dir: str,
    n: int,
    seed: int,
    metrics: Output[Metrics],
    report: Output[HTML],
) -> NamedTuple("EvaluateOutputs", metrics_path=str):
    from medsynth.pipeline_steps import evaluate_step

    return evaluate_step(run_dir, dataset_dir, n, seed, metrics, report)
