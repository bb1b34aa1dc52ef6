"""medsynth-train: prepare → train per candidate → compare → train the winner → evaluate → export → push.

A candidate is a D backbone under the run's parameters (the paper's eight by default) or a named
generator × discriminator configuration (medsynth.train.candidates: `paper`, `pg-lite0`, ...).

Beside them, after prepare: `utility` (the tracker with and without synthetic frames; off unless
`utility_seeds` > 0), whose verdict the push gate can require (`require_utility`).

The winner's final training continues its comparison run (same model, data and seed: with exact
resume, the same numbers as one run of `train_steps`), so its first `compare_steps` are not redone.

Reads like the DAG it draws. The backbone fan-out is a Python loop at compile
time (kfp.local in kfp 2.13 has no ParallelFor), so the list of candidates is a
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
from components.utility import utility, utility_not_requested

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
        max_minutes=params["train_minutes"],
        train_until=params["train_until"],
        batch_size=params["batch_size"],
        backbone_weights=params["backbone_weights"],
        seed=params["seed"],
        d_augment=params["d_augment"],
        d_head=params["d_head"],
        generator=params["generator"],
    )


def build_pipeline(
    backbones: Sequence[str] | None = None, placement=None, local: bool = False  # noqa: ANN001
) -> Callable:
    """The pipeline function for a fixed list of candidates to compare and a fixed `Placement`.

    The placement (medsynth.cluster.Placement: GPU node type, spot nodes, credentials,
    multi-node final training) shapes the pods' specs, so it is chosen at compile time.
    `local`: the variant kfp.local runs (`medsynth demo`), without the constructs it lacks (dsl.If).
    """
    from medsynth.cluster import Placement, configure_launch_task, size_task
    from medsynth.train.candidates import candidate_options

    placement = placement or Placement()
    backbones = list(backbones or default_backbones())
    for b in backbones:
        candidate_options(b)  # unknown names fail at compile time, with the list of valid ones

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def medsynth_train(
        dataset_uri: str = "builtin://phantom",
        image_size: int = 256,
        compare_steps: int = 500,
        train_steps: int = 20000,
        train_minutes: float = 0.0,
        train_until: float = 0.0,
        batch_size: int = 16,
        backbone_weights: str = "imagenet",
        strategy: str = "auto",
        d_augment: str = "auto",
        d_head: str = "auto",
        generator: str = "paper",
        gpus: int = 1,
        storage_root: str = "gs://YOUR_BUCKET/medsynth",
        model_repository: str = "gs://YOUR_BUCKET/models",
        model_name: str = "generator",
        eval_frames: int = 1000,
        criterion: str = "auto",
        if_all_collapsed: str = "stop",
        gate_margin: float = 0.0,
        phantom_frames: int = 4096,
        seed: int = 0,
        workers: int = 2,
        namespace: str = "medsynth",
        utility_seeds: int = 0,
        utility_n_real: list = [32, 64, 256],  # noqa: B006 - KFP reads the default, nothing mutates it
        utility_n_synthetic: int = 4000,
        utility_gan_steps: int = 2000,
        utility_tracker_steps: int = 1500,
        require_utility: bool = False,
    ):
        """Train, compare, judge and serve a generator of X-ray frames.

        Args:
            dataset_uri: The frames to learn from: builtin://phantom (synthetic angiography, the
                default), a gs:// prefix or a local folder of DICOM, PNG or JPEG files or a .zip of
                them; COCO key-point files beside them are kept as labels.
            image_size: Frame side in pixels, a power of two from 8 to 1024 (256: the paper's).
            compare_steps: Training steps of each compared candidate (500); the winner's
                run continues from them.
            train_steps: Training steps of the winner in all, counting its compare_steps (20000).
            train_minutes: Wall-clock minutes the winner's final training may run (0, the default: no
                limit); past them it stops at the step reached, with a checkpoint, and is judged and
                gated like any run (its metrics say `stopped_by`).
            train_until: A deadline for the same final training, as Unix time in seconds (0, the default:
                none); the tighter of the two limits applies. `medsynth demo` sets it so that the whole
                demo ends within its minutes.
            batch_size: Frames per step, split across the GPUs of a training (16, the paper's).
            backbone_weights: The discriminator backbone's weights: imagenet (downloaded by name;
                EfficientNet-Lite0's ship with medsynth; the convnet baseline has none), none (random,
                trained) or a gs:// or local weights file.
            strategy: How a training spreads over its GPUs: auto (mirrored with several GPUs, else
                one device), one, mirrored, multiworker or horovod.
            d_augment: DiffAugment of every frame the discriminator sees: auto (all four), none, or a
                comma list of brightness, contrast, translation, cutout.
            d_head: The discriminator's head on its backbone: auto (each backbone's own), paper
                (Table 3: pooling, batch norm, one dense unit) or projected (Projected GAN's
                multi-scale heads on frozen features).
            generator: The generator of every training whose candidate does not fix it: paper (Table 1's,
                the default) or fastgan (FastGAN's lightweight G as Projected GAN runs it: spectral
                norm, GLU, skip-layer excitation).
            gpus: GPUs of the final training (per worker with a multi-node training); each compared
                training gets one; 0 runs on CPUs.
            storage_root: Where data sets and runs are kept (gs://BUCKET/PREFIX or a local path); the
                default names no real bucket and must be replaced.
            model_repository: The repository TF Serving polls (gs://BUCKET/models or a local path):
                a model is pushed into it only if it passes the quality gate; replace the default.
            model_name: The model's folder in model_repository and its name in TF Serving's API.
            eval_frames: Generated and held-out real frames each evaluation compares (1000).
            criterion: The metric that ranks the candidates and gates the push: auto (ratio_to_floor,
                the worse of the FD and SWD ratios to two real samples' distance; else fd_efflite0,
                else swd) or a metric key such as fd_efflite0, swd_ratio, swd.
            if_all_collapsed: What happens when every compared candidate raised the collapse alarm:
                stop (the default: the run fails with that verdict in one line, after the comparison
                pages are written) or continue (the least bad goes on; the push gate still refuses an
                alarmed model).
            gate_margin: How much better than the served model the new one must be on the criterion
                to be pushed (0: at least as good).
            phantom_frames: Frames of builtin://phantom (4096); ignored for other data.
            seed: Seed of the data split, the training and the evaluation (same seed, same numbers).
            workers: Nodes of a multi-node final training (only when compiled with --multi-node).
            namespace: Kubernetes namespace of that multi-node training job (only with --multi-node).
            utility_seeds: How many seeds of the utility experiment (do synthetic labelled frames help
                a key-point tracker more than classic augmentation and self-training?) to run; 0, the
                default, skips it.
            utility_n_real: Numbers of real labelled frames the utility experiment tries, e.g. [32, 64, 256].
            utility_n_synthetic: Synthetic frames its generator arms draw from (4000).
            utility_gan_steps: Training steps of its key-point-conditioned generator, which learns from
                every training frame (2000).
            utility_tracker_steps: Training steps of each of its trackers, every arm (1500).
            require_utility: True: push only if the utility experiment ran and no arm with synthetic
                frames made the tracker worse than real frames alone.
        """
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        data = prepare(
            dataset_uri=dataset_uri,
            image_size=image_size,
            seed=seed,
            storage_root=storage_root,
            phantom_frames=phantom_frames,
        ).set_display_name("prepare")
        # Never from KFP's cache: its key is the inputs, and a schedule passes the same dataset_uri every
        # time. prepare keys its output on the source's content itself (datasets/<name>/<hash>/):
        # unchanged frames are re-read and hashed, not decoded again; new frames make a new data set.
        size_task(data, "prepare").set_caching_options(False)
        dataset_dir = data.outputs["dataset_dir"]

        # Does the synthetic data help a key-point tracker? (utility_seeds = 0: not run.) Its generators
        # learn from every training frame, the condition from N labelled ones; the gate can require
        # "not worse than real frames alone" (require_utility).
        # On the cluster it takes a GPU (and the trainer image) only when it runs; kfp.local has no
        # dsl.If, so there the one component runs and skips itself.
        def run_utility():  # noqa: ANN202
            task = utility(
                dataset_dir=dataset_dir,
                storage_root=storage_root,
                run_id=run_id,
                image_size=image_size,
                n_real=utility_n_real,
                n_synthetic=utility_n_synthetic,
                seeds=utility_seeds,
                gan_steps=utility_gan_steps,
                tracker_steps=utility_tracker_steps,
            )
            return task.set_display_name("utility").set_caching_options(False)

        if local:
            utility_report = run_utility().outputs["report_path"]
        else:
            with dsl.If(utility_seeds > 0, name="utility-requested"):
                useful = placement.on_gpus(run_utility(), 1)
            with dsl.Else(name="utility-not-requested"):
                skipped = size_task(utility_not_requested(), "note").set_display_name("utility")
                skipped.set_caching_options(False)
            utility_report = dsl.OneOf(useful.outputs["report_path"], skipped.outputs["report_path"])

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
                generator=generator,
            )
            short.set_display_name(f"train-{_task_name(backbone)}").set_caching_options(False)
            placement.on_gpus(short, 1)
            judged = evaluate(
                run_dir=short.outputs["run_dir"], dataset_dir=dataset_dir, n=eval_frames, seed=seed
            )
            size_task(judged, "evaluate").set_display_name(f"evaluate-{_task_name(backbone)}")
            evaluations.append(judged)

        # run_id alone, as a whole parameter: the KFP backend substitutes a job placeholder only then
        ranking = compare(storage_root=storage_root, run_id=run_id, backbones=backbones, criterion=criterion,
                          if_all_collapsed=if_all_collapsed)
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
            utility_report=utility_report,
            require_utility=require_utility,
        ).set_display_name("push")
        size_task(pushed, "push").set_caching_options(False)  # it publishes: never skipped as "done"

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
