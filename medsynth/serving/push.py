"""The Pusher: a model reaches the served repository only after it is blessed.

Blessed means (like TFX's Evaluator + InfraValidator + Pusher): its primary
metric beats the currently served version's by a margin, the generator did not
collapse, and the SavedModel loads and answers a predict in a separate process
that imports neither medsynth nor tensorflow_addons, as TF Serving would.

The metric `auto` (the default) is the first of ratio_to_floor (the worse of the FD and SWD ratios
to the real floor), fd_efflite0 and swd that the new model and the served version both have
(`registry.resolve_criterion`); a metric computed in different feature spaces for the two is never
compared: the push is refused.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medsynth import storage
from medsynth.cache import cache_root
from medsynth.errors import ConfigError, ServingError
from medsynth.serving.export import list_versions
from medsynth.storage import atomic_directory, atomic_write_json

log = logging.getLogger("medsynth")

METRICS_FILE = "assets.extra/metrics.json"
SAVED_MODEL_FILE = "saved_model.pb"  # what TF Serving's loader looks for first
STAGING_PREFIX = ".staging-"  # not an integer: TF Serving and list_versions skip it


@dataclass
class PushConfig:
    model: str
    model_repository: str
    model_name: str = "generator"
    metrics: str = ""
    margin: float = 0.0
    metric: str = "auto"  # auto: ratio_to_floor, else fd_efflite0, else swd: the first both results have
    infra_validate: bool = True
    decision_out: str | None = None
    utility_report: str = ""  # the utility experiment's results.json (medsynth.utility)
    require_utility: bool = False  # refuse when synthetic frames made the tracker worse (or it did not run)


@dataclass
class PushDecision:
    pushed: bool
    version: int | None
    metric: str
    new_value: float | None
    served_version: int | None
    served_value: float | None
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        verdict = f"pushed as version {self.version}" if self.pushed else "not pushed"
        return f"{verdict}: " + "; ".join(self.reasons)


def infra_validate(model_dir: str | Path, timeout: float = 300.0) -> str | None:
    """Load and query the SavedModel in a clean process; None when it works, else why not."""
    code = (
        "import sys, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "f = m.signatures['serving_default']\n"
        "spec = f.structured_input_signature[1]\n"
        "name, s = next(iter(spec.items()))\n"
        "x = tf.zeros([2] + s.shape.as_list()[1:], s.dtype)\n"
        "out = f(**{name: x})\n"
        "img, png = out['images'], out['png_bytes']\n"
        "assert img.dtype == tf.uint8 and img.shape[0] == 2, img.shape\n"
        "assert all(b.startswith(b'\\x89PNG') for b in png.numpy()), 'not PNG'\n"
        "print('ok', img.shape)\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(model_dir)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=tempfile.gettempdir(),
        )
    except subprocess.TimeoutExpired:
        return f"predict did not answer within {timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"SavedModel failed to load or predict: {last}"
    return None


def push(cfg: PushConfig) -> PushDecision:
    from medsynth.evaluate.pages import floor_sentence
    from medsynth.evaluate.registry import (
        AUTO_ORDER,
        CRITERIA,
        PRIMARY_METRICS,
        check_comparable,
        resolve_criterion,
    )

    if cfg.metric not in CRITERIA:
        raise ConfigError(f"unknown gate metric {cfg.metric!r}; choose one of {', '.join(CRITERIA)}")
    model = storage.fetch(cfg.model, cache_root("push"))
    if not (Path(model) / "saved_model.pb").exists():
        raise ServingError(f"--model {cfg.model} is not a SavedModel directory (no saved_model.pb)")
    new = storage.read_json(cfg.metrics)
    new = new.get("metrics", new)
    model_root = f"{str(cfg.model_repository).rstrip('/')}/{cfg.model_name}"
    versions = list_versions(model_root)
    served_version = versions[-1] if versions else None
    served: dict[str, Any] = {}
    if served_version is not None and storage.exists(f"{model_root}/{served_version}/{METRICS_FILE}"):
        served = storage.read_json(f"{model_root}/{served_version}/{METRICS_FILE}")
    metric = resolve_criterion(cfg.metric, [new, served] if served else [new])
    lower_is_better = PRIMARY_METRICS[metric] == "lower"
    value, served_value = new.get(metric), served.get(metric)

    reasons: list[str] = []
    if cfg.metric != metric:
        reasons.append(f"gate metric {metric} ({cfg.metric}: the first of {', '.join(AUTO_ORDER)} that "
                       "every compared result has)")
    if floor_sentence(new):
        reasons.append(f"quality: {floor_sentence(new)}")
    ok = True
    if value is None:
        ok = False
        reasons.append(f"new model has no {metric} in {cfg.metrics}")
    elif served_value is None:
        reasons.append(f"no served version with {metric} to beat; judged on its own metrics")
    else:
        try:
            check_comparable(new, served, [metric])
        except ConfigError as exc:
            ok = False
            reasons.append(f"refused: {exc}")
        else:
            if lower_is_better:
                better = value < served_value - cfg.margin
            else:
                better = value > served_value + cfg.margin
            word = "beats" if better else "does not beat"
            reasons.append(
                f"{metric} {value:.4g} {word} served v{served_version} {served_value:.4g} "
                f"by margin {cfg.margin:g}"
            )
            ok = better
    if new.get("collapse"):
        ok = False
        why = f": {new['collapse_reason']}" if new.get("collapse_reason") else ""
        reasons.append(f"mode-collapse alarm raised by the evaluation{why}")
    if cfg.require_utility:
        judged = _utility_judgement(cfg.utility_report)
        ok = ok and judged[0]
        reasons.append(judged[1])
    if ok and cfg.infra_validate:
        problem = infra_validate(model)
        if problem:
            ok = False
            reasons.append(problem)
        else:
            reasons.append("loads and answers a predict in a clean process")

    version = None
    if ok:
        version = (served_version or 0) + 1
        target = f"{model_root}/{version}"
        if storage.is_gcs(target):
            with tempfile.TemporaryDirectory() as tmp:
                staged = Path(tmp) / str(version)
                shutil.copytree(model, staged)
                atomic_write_json(staged / METRICS_FILE, new)
                publish_version(staged, model_root, version)
        else:  # one rename from a name TF Serving skips (`.N.*.tmp` is no integer)
            with atomic_directory(target) as tmp:
                shutil.copytree(model, tmp, dirs_exist_ok=True)
                atomic_write_json(tmp / METRICS_FILE, new)
        log.info("pushed %s as %s", cfg.model, target)
    decision = PushDecision(ok, version, metric, value, served_version, served_value, reasons)
    if cfg.decision_out:
        storage.write_json(cfg.decision_out, asdict(decision))
    return decision


def publish_version(staged: Path, model_root: str, version: int) -> str:
    """Put a SavedModel at `gs://…/<model_root>/<version>/` so that TF Serving never loads part of one.

    Object storage has no rename, and TF Serving lists `<version>/` as soon as one object lies below
    it (FileSystemStoragePathSource takes the first path component of every object name). So:
    1. the whole version is uploaded under `.staging-<version>-<random>/`, a name TF Serving skips
       (its version must parse as an integer), then
    2. copied inside the bucket into `<version>/`: every file but saved_model.pb, then saved_model.pb,
       then medsynth's `_COMPLETE` marker; the staging copy is deleted.
    TF Serving's loader needs saved_model.pb before it reads anything else: a load tried during the
    copy (seconds) fails cleanly and is retried a minute later (--max_num_load_retries 5,
    --load_retry_interval_micros 60 s, its defaults) while the served version keeps serving; a load
    that finds saved_model.pb finds every other file of the version too.
    """
    target = f"{model_root}/{version}"
    staging = f"{model_root}/{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    storage.publish_dir(staged, staging)
    try:
        storage.copy_tree(staging, target, last=(SAVED_MODEL_FILE,))
    finally:
        storage.delete_prefix(staging)
    return target


def _utility_judgement(path: str) -> tuple[bool, str]:
    """(passes, reason) of the gate's option "synthetic frames do not make the tracker worse"."""
    if not path or not storage.exists(path):
        return False, "the utility experiment is required but was not run (no report)"
    verdict = storage.read_json(path)["verdict"]
    if verdict["not_worse"]:
        return True, f"utility experiment: {verdict['text']}"
    return False, f"refused by the utility experiment: {verdict['text']}"


def decision_markdown(decision: PushDecision) -> str:
    served = (
        "none" if decision.served_version is None else f"v{decision.served_version}: {decision.served_value}"
    )
    verdict = f"**pushed** as version {decision.version}" if decision.pushed else "**refused**"
    return "\n".join(
        [
            f"## Push: {verdict}",
            "",
            "| | value |",
            "|---|---|",
            f"| gate metric | {decision.metric} |",
            f"| new model | {decision.new_value} |",
            f"| served | {served} |",
            "",
            *[f"- {r}" for r in decision.reasons],
            "",
        ]
    )
