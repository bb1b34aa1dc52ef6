"""What each KFP component does, as plain functions over artifact objects.

The components in `components/` only forward their arguments here, so the
pipeline's logic is importable, testable and lives in the library. Large data
(shards, checkpoints) stays in the storage layout of DESIGN.md §5 under
`storage_root`; KFP artifacts carry what the UI shows (metrics, reports,
pictures) and the SavedModel.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth import storage
from medsynth.cache import cache_root
from medsynth.cluster.settings import NAMESPACE
from medsynth.cpu import choose_onednn
from medsynth.errors import ConfigError
from medsynth.progress import report_result
from medsynth.storage import atomic_write_bytes, atomic_write_json, atomic_write_text, join
from medsynth.train.config import TrainConfig

log = logging.getLogger("medsynth")

choose_onednn()  # a component's first import of medsynth, before TensorFlow loads (medsynth.cpu)

CACHE = cache_root("pipeline")  # working copies of gs:// runs and data sets
DECISION_FILE = "push_decision.json"  # beside the evaluated run's metrics.json


def run_root(storage_root: str, run_id: str) -> str:
    """`runs/<run-id>` under the storage root (DESIGN.md §5): every task of one pipeline run writes there.

    `run_id` must be a real id: a KFP backend that does not substitute the job placeholder (before
    2.5, or inside a longer string) passes it through verbatim, and every run would then share, and
    resume from, one directory.
    """
    if not run_id or "{{" in run_id or "/" in run_id:
        raise ConfigError(
            f"run id {run_id!r} is not a pipeline run id: the KFP backend did not substitute "
            "{{$.pipeline_job_uuid}} (KFP >= 2.5 does, when it is a whole parameter value)"
        )
    return join(storage_root, "runs", run_id)


def local(uri: str) -> Path:
    """A local directory with the content of `uri` (the path itself when it is local)."""
    return Path(storage.fetch(uri, CACHE)) if storage.is_gcs(uri) else Path(uri)


def publish_back(local_dir: Path, uri: str) -> None:
    """Results written in a working copy go to where the storage layout says they live."""
    if storage.is_gcs(uri):
        storage.upload_dir(local_dir, uri)
    elif Path(uri).resolve() != Path(local_dir).resolve():
        storage.copy_tree(str(local_dir), uri)


def _dir(artifact: Any) -> Path:
    path = Path(artifact.path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _html(artifact: Any, text: str) -> None:
    atomic_write_text(artifact.path, text)


def _log_metrics(artifact: Any, values: dict[str, Any]) -> None:
    for k, v in sorted(values.items()):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            artifact.log_metric(k, float(v))


def prepare_step(
    dataset_uri: str,
    image_size: int,
    seed: int,
    storage_root: str,
    phantom_frames: int,
    dataset: Any,
    preview: Any,
) -> tuple[str]:
    from medsynth.data.prepare import PrepareConfig, prepare
    from medsynth.evaluate.report import report_html

    result = prepare(
        PrepareConfig(
            source=dataset_uri,
            out=storage_root,
            image_size=image_size,
            seed=seed,
            phantom_frames=phantom_frames,
        )
    )
    result = str(result)  # a local path, or a gs:// URI that `Path` would mangle
    raw = storage.read_bytes(join(result, "manifest.json"))
    manifest = json.loads(raw)
    out = _dir(dataset)
    atomic_write_bytes(out / "manifest.json", raw)
    dataset.metadata.update(
        {"dataset_dir": result, "hash": manifest.get("hash", ""), "image_size": image_size}
    )
    counts = {f"frames_{k}": v["frames"] for k, v in manifest.get("splits", {}).items()}
    labelled = (manifest.get("keypoints") or {}).get("labelled_frames", {})
    counts |= {f"labelled_frames_{k}": v for k, v in labelled.items()}
    counts["quarantined"] = manifest.get("quarantined", 0)
    pictures = {}
    if storage.exists(join(result, "preview.png")):
        pictures["preview"] = atomic_write_bytes(
            out / "preview.png", storage.read_bytes(join(result, "preview.png"))
        )
    _html(preview, report_html(f"data set {result.rstrip('/').rsplit('/', 1)[-1]}", counts, pictures))
    splits = ", ".join(f"{v:,} {k[len('frames_'):]}" for k, v in counts.items() if k.startswith("frames_"))
    report_result(f"{splits} frames, {counts['quarantined']} quarantined: {result}")
    return (result,)


@dataclass(frozen=True)
class TrainTask:
    """What a pipeline training task is given, single pod (`train`) or multi-node job
    (`launch_training_job`) alike: the components build it with keywords, `config` makes it the
    run's TrainConfig, in this one place."""

    dataset_dir: str
    storage_root: str
    run_id: str
    run_name: str
    backbone: str
    image_size: int
    steps: int
    batch_size: int
    backbone_weights: str
    seed: int
    strategy: str = "auto"
    d_augment: str = "auto"
    d_head: str = "auto"
    generator: str = "paper"
    init_run: str = ""  # another run of this pipeline run (the winner's comparison run) to continue
    max_minutes: float = 0.0  # the training's wall-clock limit (0: none), TrainConfig.max_minutes
    train_until: float = 0.0  # Unix time by which the training stops (0: none): a run's deadline

    def minutes_left(self) -> float | None:
        """The tighter of `max_minutes` and what is left until `train_until`, from now; None: no limit.
        A deadline already past leaves one step (the loop checks the clock after each)."""
        limits = [self.max_minutes] if self.max_minutes else []
        if self.train_until:
            limits.append(max((self.train_until - time.time()) / 60, 1e-3))
        return min(limits) if limits else None

    @classmethod
    def of(cls, inputs: dict[str, Any]) -> TrainTask:
        """From a component's inputs (its `locals()`): the ones named like a field, the rest left."""
        return cls(**{f.name: inputs[f.name] for f in dataclasses.fields(cls) if f.name in inputs})

    def config(self, metrics_port: int | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """`backbone` names a comparison candidate: a named configuration's fields win over the run's;
        `overrides` (TrainConfig fields, e.g. from `bench/train_step.py --set`) win over both, before
        the config resolves its defaults."""
        from medsynth.train.candidates import candidate_options

        root = run_root(self.storage_root, self.run_id)
        run_wide = dict(
            data=self.dataset_dir,
            out=join(root, self.run_name),
            init_from=join(root, self.init_run) if self.init_run else None,
            image_size=self.image_size,
            steps=self.steps,
            batch_size=self.batch_size,
            seed=self.seed,
            backbone_weights=self.backbone_weights,
            strategy=self.strategy,
            d_augment=self.d_augment,
            d_head=self.d_head,
            generator=self.generator,
            checkpoint_every=max(1, min(500, self.steps // 4 or 1)),
            max_minutes=self.minutes_left(),
            metrics_port=metrics_port,
        )
        return TrainConfig(**{**run_wide, **candidate_options(self.backbone), **(overrides or {})})


def train_step(task: TrainTask, model: Any, metrics: Any, samples: Any) -> tuple[str]:
    from medsynth.cluster import METRICS_PORT_ENV
    from medsynth.evaluate.report import report_html
    from medsynth.train.loop import train

    # On the cluster the task's pod sets the port (k8s/monitoring scrapes it); kfp.local sets nothing.
    port = os.environ.get(METRICS_PORT_ENV, "").strip()
    cfg = task.config(metrics_port=int(port) if port.isdigit() else None)
    run_uri = cfg.out
    result = train(cfg)
    run_dir = Path(result.run_dir) if Path(result.run_dir).is_dir() else local(run_uri)
    out = _dir(model)
    backbone = task.backbone
    atomic_write_json(out / "run.json", {"run_dir": run_uri, "backbone": backbone, "step": result.step})
    model.metadata.update({"run_dir": run_uri, "backbone": backbone, "step": result.step})
    _log_metrics(metrics, result.metrics)
    pictures = {
        name: run_dir / rel
        for name, rel in [
            ("samples", "samples/latest.png"),
            ("losses", "losses.png"),
            ("D outputs", "d_outputs.png"),
        ]
        if (run_dir / rel).exists()
    }
    _html(samples, report_html(f"training {task.run_name} ({backbone})", result.metrics, pictures))
    rate = result.metrics.get("images_per_s")
    report_result(f"{backbone}: step {result.step}" + (f", {rate:.1f} img/s" if rate else ""))
    return (run_uri,)


def launch_step(
    task: TrainTask,
    kind: str,
    workers: int,
    gpus_per_worker: int,
    image: str,
    namespace: str = NAMESPACE,
    gpu_type: str = "",
    spot: bool = False,
    credentials_secret: str = "",
    api_client: Any | None = None,
    poll_s: float = 15.0,
) -> tuple[str]:
    """What the `launch_training_job` component does: the pipeline's `train` task, on several nodes,
    with the TrainConfig the single-pod task would use."""
    from medsynth.cluster import launch_training_job, owner_reference

    cfg = task.config()
    owner = owner_reference(namespace)
    if owner is None:
        log.info("the job goes to namespace %s, not this pod's: cancelling relies on SIGTERM", namespace)
    launch_training_job(
        cfg,
        kind,
        workers,
        gpus_per_worker,
        image,
        namespace=namespace,
        gpu_type=gpu_type or None,
        spot=spot,
        credentials_secret=credentials_secret or None,
        owner=owner,
        api_client=api_client,
        poll_s=poll_s,
    )
    return (cfg.out,)


def evaluate_step(
    run_dir: str, dataset_dir: str, n: int, seed: int, metrics: Any, report: Any,
    checkpoint: str = "latest", criterion: str = "auto",
) -> tuple[str]:
    from medsynth.evaluate.pages import quality_line
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run

    run = local(run_dir)
    cfg = EvaluateConfig(run=str(run), data=dataset_dir, n=n, seed=seed, checkpoint=checkpoint,
                         criterion=criterion)
    values = evaluate_run(cfg)
    _log_metrics(metrics, values)
    eval_dir = run / "eval"
    publish_back(eval_dir, join(run_dir, "eval"))
    _html(report, (eval_dir / "report.html").read_text())
    report_result(quality_line(values))
    return (join(run_dir, "eval", "metrics.json"),)


def compare_step(
    storage_root: str, run_id: str, backbones: list[str], criterion: str, table: Any, pictures: Any,
    if_all_collapsed: str = "continue",
) -> tuple[str]:
    """Rank this run's backbones; the run's directory is built here from the root and the run id
    (each a whole KFP parameter, which the backend substitutes, unlike a placeholder inside a string)."""
    from medsynth.evaluate.compare import compare_runs

    root = run_root(storage_root, run_id)
    CACHE.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="compare-", dir=CACHE))
    for b in backbones:  # only what the comparison reads: each run's evaluation and training metrics
        storage.copy_tree(join(root, b, "eval"), str(runs / b / "eval"))
        if storage.exists(join(root, b, "metrics.json")):
            atomic_write_bytes(runs / b / "metrics.json", storage.read_bytes(join(root, b, "metrics.json")))
    out = runs / "comparison"
    try:
        result = compare_runs(runs, list(backbones), out, criterion, if_all_collapsed)
    finally:  # the pages also when the comparison stops the run: they show why
        if (out / "comparison.json").exists():
            publish_back(out, join(root, "comparison"))
    atomic_write_text(table.path, (out / "comparison.md").read_text())
    _html(pictures, (out / "comparison.html").read_text())
    report_result(result.verdict)
    return (result.winner,)


def export_step(run_dir: str, metrics_path: str, model_name: str, model: Any) -> None:
    from medsynth.serving.export import export_generator
    from medsynth.train.checkpoints import load_generator

    evaluated = storage.read_json(metrics_path)
    generator, info = load_generator(local(run_dir), evaluated.get("step"))  # the checkpoint judged
    info["metrics"] = evaluated
    info["model_name"] = model_name
    out = Path(model.path)
    export_generator(generator, out, metadata=info)
    model.metadata.update({"run_dir": run_dir, "backbone": info["backbone"], "step": info["step"]})
    report_result(f"SavedModel of {info['backbone']}, step {info['step']}")


def utility_step(
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    image_size: int,
    n_real: list[int],
    n_synthetic: int,
    seeds: int,
    gan_steps: int,
    tracker_steps: int,
    metrics: Any,
    table: Any,
    pictures: Any,
) -> tuple[str]:
    """The utility experiment on the prepared data set, in `runs/<run-id>/utility`, every arm; `seeds` = 0
    skips it (it trains a generator per N and seed: hours at full size) and returns no report. The push
    gate's `require_utility` reads the same results.json."""
    from medsynth.evaluate.report import report_html
    from medsynth.utility import UtilityConfig, run_utility

    if seeds < 1:
        return utility_not_requested(table, pictures)
    uri = join(run_root(storage_root, run_id), "utility")
    work = CACHE / "utility" / run_id
    cfg = UtilityConfig(
        data=str(local(dataset_dir)),
        out=str(work),
        image_size=image_size,
        n_real=tuple(int(n) for n in n_real),
        n_synthetic=int(n_synthetic),
        seeds=tuple(range(seeds)),
        gan_steps=gan_steps,
        tracker_steps=tracker_steps,
    )
    summary = run_utility(cfg)
    publish_back(work, uri)
    verdict = summary["verdict"]
    values: dict[str, Any] = {"synthetic_not_worse": float(verdict["not_worse"])}
    for row in summary["rows"]:
        key = f"n{row['n_real']}_{row['arm'].replace('-', '_')}"
        values[f"{key}_tip_error_median"] = row["metrics"]["val_tip_error_median_px"]["mean"]
        values[f"{key}_bif_f1"] = row["metrics"]["val_bif_f1"]["mean"]
    _log_metrics(metrics, values)
    atomic_write_text(table.path, (work / "utility.md").read_text())
    shown = {"tracker per arm against N": work / "utility.png"}
    if (work / "synthetic.png").exists():
        shown["generated"] = work / "synthetic.png"  # captioned synthetic on the page
    _html(pictures, report_html(f"utility experiment: {verdict['line']}", values, shown))
    report_result(f"{verdict['line']}; gate: {verdict['text']}")
    return (join(uri, "results.json"),)


def utility_not_requested(table: Any, pictures: Any) -> tuple[str]:
    """What the UI shows when the experiment was not asked for (utility_seeds = 0); no report."""
    from medsynth.evaluate.report import report_html

    atomic_write_text(table.path, "The utility experiment was not requested (utility_seeds = 0).\n")
    _html(pictures, report_html("utility experiment: not requested", {}, {}))
    report_result("not requested (utility_seeds = 0)")
    return ("",)


def push_step(
    model: Any,
    metrics_path: str,
    model_repository: str,
    model_name: str,
    metric: str,
    margin: float,
    decision: Any,
    utility_report: str = "",
    require_utility: bool = False,
) -> tuple[bool, int]:
    from medsynth.serving.push import PushConfig, decision_markdown, push

    result = push(
        PushConfig(
            model=model.path,
            model_repository=model_repository,
            model_name=model_name,
            metrics=metrics_path,
            metric=metric,
            margin=margin,
            decision_out=join(storage.parent(metrics_path), DECISION_FILE),
            utility_report=utility_report,
            require_utility=require_utility,
        )
    )
    atomic_write_text(decision.path, decision_markdown(result))
    report_result(result.summary())
    return (result.pushed, result.version or 0)
