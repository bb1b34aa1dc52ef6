"""What each KFP component does, as plain functions over artifact objects.

The components in `components/` only forward their arguments here, so the
pipeline's logic is importable, testable and lives in the library. Large data
(shards, checkpoints) stays in the storage layout of DESIGN.md §5 under
`storage_root`; KFP artifacts carry what the UI shows (metrics, reports,
pictures) and the SavedModel.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from medsynth.storage import atomic_write_json, atomic_write_text, read_json


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
    manifest = read_json(Path(result) / "manifest.json")
    out = _dir(dataset)
    shutil.copy(Path(result) / "manifest.json", out / "manifest.json")
    dataset.metadata.update(
        {"dataset_dir": str(result), "hash": manifest.get("hash", ""), "image_size": image_size}
    )
    counts = {f"frames_{k}": v for k, v in (manifest.get("counts") or {}).items()}
    pictures = {"preview": Path(result) / "preview.png"} if (Path(result) / "preview.png").exists() else {}
    _html(preview, report_html(f"data set {Path(result).name}", counts, pictures))
    return (str(result),)


def train_step(
    dataset_dir: str,
    storage_root: str,
    run_id: str,
    run_name: str,
    backbone: str,
    image_size: int,
    steps: int,
    batch_size: int,
    backbone_weights: str,
    strategy: str,
    seed: int,
    model: Any,
    metrics: Any,
    samples: Any,
) -> tuple[str]:
    from medsynth.evaluate.report import report_html
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    run_dir = Path(storage_root) / "runs" / run_id / run_name
    cfg = TrainConfig(
        data=dataset_dir,
        out=str(run_dir),
        image_size=image_size,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        backbone=backbone,
        backbone_weights=backbone_weights,
        strategy=strategy,
        checkpoint_every=max(1, min(500, steps // 4 or 1)),
    )
    result = train(cfg)
    out = _dir(model)
    atomic_write_json(out / "run.json", {"run_dir": str(run_dir), "backbone": backbone, "step": result.step})
    model.metadata.update({"run_dir": str(run_dir), "backbone": backbone, "step": result.step})
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
    _html(samples, report_html(f"training {run_name} ({backbone})", result.metrics, pictures))
    return (str(run_dir),)


def evaluate_step(run_dir: str, dataset_dir: str, n: int, seed: int, metrics: Any, report: Any) -> tuple[str]:
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run

    values = evaluate_run(EvaluateConfig(run=run_dir, data=dataset_dir, n=n, seed=seed))
    _log_metrics(metrics, values)
    eval_dir = Path(run_dir) / "eval"
    _html(report, (eval_dir / "report.html").read_text())
    return (str(eval_dir / "metrics.json"),)


def compare_step(
    run_root: str, backbones: list[str], criterion: str, table: Any, pictures: Any
) -> tuple[str]:
    from medsynth.evaluate.compare import compare_runs

    out = Path(run_root) / "comparison"
    result = compare_runs(run_root, list(backbones), out, criterion)
    atomic_write_text(table.path, (out / "comparison.md").read_text())
    _html(pictures, (out / "comparison.html").read_text())
    return (result.winner,)


def export_step(run_dir: str, metrics_path: str, model_name: str, model: Any) -> None:
    from medsynth.serving.export import export_generator
    from medsynth.train.checkpoints import load_generator

    generator, info = load_generator(run_dir)
    info["metrics"] = read_json(metrics_path)
    info["model_name"] = model_name
    out = Path(model.path)
    export_generator(generator, out, metadata=info)
    model.metadata.update({"run_dir": run_dir, "backbone": info["backbone"], "step": info["step"]})


def push_step(
    model: Any,
    metrics_path: str,
    model_repository: str,
    model_name: str,
    metric: str,
    margin: float,
    decision: Any,
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
            decision_out=str(Path(metrics_path).parent / "push_decision.json"),
        )
    )
    atomic_write_text(decision.path, decision_markdown(result))
    return (result.pushed, result.version or 0)
