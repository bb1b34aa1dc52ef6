"""export: the generator as a TF Serving SavedModel (serving_default: z → images, png_bytes)."""

from kfp import dsl
from kfp.dsl import Model, Output

from components.images import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def export(run_dir: str, metrics_path: str, model_name: str, model: Output[Model]):
    from medsynth.pipeline_steps import export_step

    export_step(run_dir, metrics_path, model_name, model)
