"""evaluate: image-quality metrics of one run on a fixed, seeded set of frames.

`checkpoint` best (the final run): every kept checkpoint is judged, the best without a collapse
alarm is reported, and export ships that one.
"""

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
    checkpoint: str = "latest",
    criterion: str = "auto",
) -> NamedTuple("EvaluateOutputs", metrics_path=str):
    from medsynth.pipeline_steps import evaluate_step

    return evaluate_step(run_dir, dataset_dir, n, seed, metrics, report, checkpoint, criterion)
