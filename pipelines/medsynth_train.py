"""medsynth-train: prepare → train per backbone → compare → train the winner → evaluate → export → push.

Beside them, after prepare: `utility` (the tracker with and without synthetic frames; off unless
`utility_seeds` > 0), whose verdict the push gate can require (`require_utility`).

The winner's final training continues its comparison run (same model, data and seed: with exact
resume, the same numbers as one run of `train_steps`), so its first `compare_steps` are not redone.

Reads like the DAG it draws. The backbone fan-out is a Python loop at compile
time (kfp.local in kfp 2.13 has no ParallelFor), so the list of backbones is a
compile-time option; every other knob is a run-time parameter.

No `from __future__ import annotations` here: kfp reads the pipeline's type
hints at definition time and needs real types, not strings.
"""

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from kfp import compiler, dsl

from components.compare import compare
from components.evaluate import evaluate
from components.export import export
from components.images import TRAINER_IMAGE
from components.launch_training_job import launch_training_job
from components.prepare import prepare
from components.push import push
from components.train import train
from components.utility import utility

PIPELINE_NAME = "medsynth-train"
DEFAULT_YAML = Path(__file__).with_name("medsynth_train.yaml")


def default_backbones() -> list[str]:
    from medsynth.models.backbones import backbone_names

    return backbone_names()


def _task_name(backbone: str) -> str:
    return re.sub(r"[^a-z0-9-]", "-", backbone.lower())


def final_training_inputs(params: dict, dataset_dir, run_id, winner) -> dict:  # noqa: ANN001
    """The final training task's inputs from the pipeline's parameters (`params`, by name): one
    mapping for the pipeline and for what `medsynth.demo.final_train_config` (and so
    bench/train_step.py --demo) builds, so they cannot drift apart. Values may be KFP channels."""
    return dict(
        dataset_dir=dataset_dir,
        storage_root=params["storage_root"],
        run_id=run_id,
        run_name="final",
        backbone=winner,
        init_run=winner,  # its comparison run: continued, not started over
        image_size=params["image_size"],
        steps=params["train_steps"],
        batch_size=params["batch_size"],
        backbone_weights=params["backbone_weights"],
        seed=params["seed"],
        d_augment=params["d_augment"],
        d_head=params["d_head"],
    )


def build_pipeline(backbones: Sequence[str] | None = None, placement=None) -> Callable:  # noqa: ANN001
    """The pipeline function for a fixed list of backbones to compare and a fixed `Placement`.

    The placement (medsynth.cluster.Placement: GPU node type, spot nodes, credentials,
    multi-node final training) shapes the pods' specs, so it is chosen at compile time.
    """
    from medsynth.cluster import Placement, configure_launch_task, size_task
    from medsynth.models.backbones import get_backbone

    placement = placement or Placement()
    backbones = list(backbones or default_backbones())
    for b in backbones:
        get_backbone(b)  # unknown names fail at compile time, with the list of valid ones

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def medsynth_train(
        dataset_uri: str = "builtin://phantom",
        image_size: int = 256,
        compare_steps: int = 500,
        train_steps: int = 20000,
        batch_size: int = 16,
        backbone_weights: str = "imagenet",
        strategy: str = "auto",
        d_augment: str = "auto",
        d_head: str = "auto",
        gpus: int = 1,
        storage_root: str = "gs://YOUR_BUCKET/medsynth",
        model_repository: str = "gs://YOUR_BUCKET/models",
        model_name: str = "generator",
        eval_frames: int = 1000,
        criterion: str = "auto",
        gate_margin: float = 0.0,
        phantom_frames: int = 4096,
        seed: int = 0,
        workers: int = 2,
        namespace: str = "medsynth",
        utility_seeds: int = 0,
        utility_n_real: list = [64, 256],  # noqa: B006 - KFP reads the default, nothing mutates it
        utility_n_synthetic: list = [1000, 4000],  # noqa: B006
        utility_gan_steps: int = 1000,
        utility_tracker_steps: int = 1500,
        require_utility: bool = False,
    ):
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        data = prepare(
            dataset_uri=dataset_uri,
            image_size=image_size,
            seed=seed,
            storage_root=storage_root,
            phantom_frames=phantom_frames,
        ).set_display_name("prepare")
        size_task(data, "prepare").set_caching_options(True)
        dataset_dir = data.outputs["dataset_dir"]

        # Does the synthetic data help a key-point tracker? (utility_seeds = 0: not run.) Its generators
        # learn from N labelled frames only; the gate can require "not worse" (require_utility).
        useful = utility(
            dataset_dir=dataset_dir,
            storage_root=storage_root,
            run_id=run_id,
            image_size=image_size,
            n_real=utility_n_real,
            n_synthetic=utility_n_synthetic,
            seeds=utility_seeds,
            gan_steps=utility_gan_steps,
            tracker_steps=utility_tracker_steps,
        ).set_display_name("utility")
        placement.on_gpus(useful, 1)
        useful.set_caching_options(False)

        evaluations = []
        for backbone in backbones:
            short = train(
                dataset_dir=dataset_dir,
                storage_root=storage_root,
                run_id=run_id,
                run_name=backbone,
                backbone=backbone,
                image_size=image_size,
                steps=compare_steps,
                batch_size=batch_size,
                backbone_weights=backbone_weights,
                strategy=strategy,
                seed=seed,
                d_augment=d_augment,
                d_head=d_head,
            )
            short.set_display_name(f"train-{_task_name(backbone)}").set_caching_options(False)
            placement.on_gpus(short, 1)
            judged = evaluate(
                run_dir=short.outputs["run_dir"], dataset_dir=dataset_dir, n=eval_frames, seed=seed
            )
            size_task(judged, "evaluate").set_display_name(f"evaluate-{_task_name(backbone)}")
            evaluations.append(judged)

        # run_id alone, as a whole parameter: the KFP backend substitutes a job placeholder only then
        ranking = compare(storage_root=storage_root, run_id=run_id, backbones=backbones, criterion=criterion)
        size_task(ranking, "compare").set_display_name("compare").after(*evaluations)

        common = final_training_inputs(locals(), dataset_dir, run_id, ranking.outputs["winner"])
        if placement.multi_node:
            # `workers` nodes of `gpus` GPUs each, run by the training operator; this task follows it.
            # The trainer image is the one named now, at compile time: the launcher's pod cannot know it.
            final = launch_training_job(
                workers=workers,
                gpus_per_worker=gpus,
                namespace=namespace,
                image=TRAINER_IMAGE,
                **placement.job_inputs(),
                **common,
            )
            configure_launch_task(final)
        else:
            final = placement.on_gpus(train(strategy=strategy, **common), gpus)
        final.set_display_name("train-final").set_caching_options(False)
        # the final run's kept checkpoints are all judged; the best passing one is exported and gated
        judged = evaluate(run_dir=final.outputs["run_dir"], dataset_dir=dataset_dir, n=eval_frames, seed=seed,
                          checkpoint="best", criterion=criterion)
        size_task(judged, "evaluate").set_display_name("evaluate-final")
        exported = export(
            run_dir=final.outputs["run_dir"],
            metrics_path=judged.outputs["metrics_path"],
            model_name=model_name,
        ).set_display_name("export")
        size_task(exported, "export")
        pushed = push(
            model=exported.outputs["model"],
            metrics_path=judged.outputs["metrics_path"],
            model_repository=model_repository,
            model_name=model_name,
            metric=criterion,
            margin=gate_margin,
            utility_report=useful.outputs["report_path"],
            require_utility=require_utility,
        ).set_display_name("push")
        size_task(pushed, "push")

    return medsynth_train


def compile_pipeline(
    out: str | Path = DEFAULT_YAML, backbones: Sequence[str] | None = None, placement=None  # noqa: ANN001
) -> Path:
    """Write the YAML a user uploads in the Kubeflow UI (atomically)."""
    from medsynth.storage import atomic_write_text

    out = Path(out)
    tmp = out.with_name(f".{out.name}.compiling.yaml")
    compiler.Compiler().compile(build_pipeline(backbones, placement), str(tmp))
    atomic_write_text(out, tmp.read_text())
    tmp.unlink()
    return out
