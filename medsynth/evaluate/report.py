"""Judging a trained run: metrics on a fixed, seeded set of frames, and the pictures to go with them.

`report_html` (pages.py) is the page the KFP UI shows for it; it is importable from here for callers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth.data.keypoints import LabelledFrames
from medsynth.evaluate.pages import report_html
from medsynth.evaluate.suite import PRDC_K
from medsynth.pictures import save_grid, to_uint8
from medsynth.progress import Progress
from medsynth.storage import atomic_write_json, atomic_write_text

log = logging.getLogger("medsynth")


@dataclass
class EvaluateConfig:
    run: str
    data: str
    n: int = 256
    seed: int = 0
    out: str | None = None
    batch_size: int = 64
    feature_extractor: str = "auto"
    inception_weights: str = "imagenet"
    prdc_k: int = PRDC_K
    pretrained: str = "auto"  # pretrained-feature (*_efflite0) metrics: auto | on | off
    # latest: the newest checkpoint; best: every kept checkpoint is judged and the best by `criterion`
    # without a collapse alarm is the one reported (and exported), as StyleGAN ships its best snapshot
    checkpoint: str = "latest"
    criterion: str = "auto"

    def __post_init__(self) -> None:
        from medsynth.errors import ConfigError

        if self.n < 2:
            raise ConfigError(f"--n must be at least 2 frames to compare, got {self.n}")
        if self.checkpoint not in ("latest", "best"):
            raise ConfigError(f"--checkpoint must be latest or best, got {self.checkpoint!r}")


def generate_frames(
    generator: tf.keras.Model,
    n: int,
    latent_dim: int,
    seed: int,
    batch_size: int = 64,
    layouts: LabelledFrames | None = None,
) -> np.ndarray:
    """n generated frames (uint8 [n, H, W]) from the evaluation's own latent stream, reproducible per seed.

    A key-point-conditioned generator draws frame i for the key points of `layouts` frame i (the
    held-out frames it is judged against), so its frames are compared with frames of the same layouts.
    """
    from medsynth.data.keypoints import heatmaps

    if len(generator.inputs) > 1 and (layouts is None or len(layouts) < n):
        from medsynth.errors import ConfigError

        have = 0 if layouts is None else len(layouts)
        raise ConfigError(f"a key-point-conditioned generator draws for given key points: {n} labelled "
                          f"frames needed to judge it, {have} given")
    out = []
    with Progress(n, "generate", unit="img") as bar:
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            z = tf.random.stateless_normal([k, latent_dim], seed=[seed, 1_000_003 + start])
            inputs = z
            if len(generator.inputs) > 1:
                part = slice(start, start + k)
                size = layouts.size
                inputs = [z, heatmaps(layouts.points[part], layouts.classes[part], layouts.mask[part], size)]
            out.append(to_uint8(generator(inputs, training=False).numpy()))
            bar.update(k)
    return np.concatenate(out)


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Metrics of a run's generator (its newest checkpoint, or the best kept one) against real
    validation frames, into `<out>/metrics.json`; `step` there names the checkpoint judged."""
    from medsynth.data.input import labelled_frames, real_sample, resolve_dataset
    from medsynth.evaluate.compare import best_row
    from medsynth.evaluate.registry import SPACE_KEYS, WORST_RATIO
    from medsynth.evaluate.suite import MetricsConfig, Reference, with_floor
    from medsynth.train.checkpoints import checkpoint_steps, load_generator

    steps = checkpoint_steps(cfg.run) if cfg.checkpoint == "best" else []
    generator, info = load_generator(cfg.run, steps[0] if steps else None)
    out = Path(cfg.out) if cfg.out else Path(cfg.run) / "eval"
    data_dir = resolve_dataset(
        cfg.data, info["image_size"], cache_root=Path(cfg.run).parent / "_data", seed=cfg.seed
    )
    layouts = None
    held_out = real_sample(data_dir, split="val", n=cfg.n, seed=cfg.seed)
    real, loops = held_out.images, held_out.loops
    if len(generator.inputs) > 1:  # conditional: judged against labelled frames, drawn for their key points
        from medsynth.data.input import labelled_count, load_manifest

        available = labelled_count(load_manifest(data_dir), "val")
        layouts = labelled_frames(data_dir, "val", n=min(cfg.n, available), seed=cfg.seed)
        real, loops = layouts.images, None
    metrics_cfg = MetricsConfig(
        n=len(real),
        seed=cfg.seed,
        prdc_k=cfg.prdc_k,
        feature_extractor=cfg.feature_extractor,
        inception_weights=cfg.inception_weights,
        pretrained=cfg.pretrained,
    )
    reference = Reference(real, metrics_cfg, loops)
    # the floor: training-split frames (same n, never the held-out ones) judged like a generator
    train = real_sample(data_dir, split="train", n=len(real), seed=cfg.seed + 1, exclude=held_out)
    floor = reference.floor(train.images, train.loops)
    judged = []
    for i, step in enumerate(steps or [info["step"]]):
        if i:
            generator, info = load_generator(cfg.run, step)
        fake = generate_frames(generator, len(real), info["latent_dim"], cfg.seed, cfg.batch_size, layouts)
        judged.append((with_floor({**reference.judge(fake), "step": info["step"]}, floor), fake, info))
    best = best_row([m for m, _, _ in judged], cfg.criterion)
    metrics, fake, info = next(j for j in judged if j[0] is best)
    metrics.update({"step": info["step"], "backbone": info["backbone"]})
    if len(judged) > 1:  # what the choice was made from
        kept = (WORST_RATIO, "fd_efflite0", "swd", "ms_ssim_fake", *SPACE_KEYS.values())
        metrics["checkpoints_judged"] = [
            {"step": m["step"], "collapse": bool(m.get("collapse")), **{k: m[k] for k in kept if k in m}}
            for m, _, _ in judged
        ]
    training = info.get("metrics") or {}
    for k in ("images_per_s", "wall_seconds"):
        if training.get(k) is not None:
            metrics[f"train_{k}"] = training[k]
    save_grid(fake[:16], out / "generated.png", title=f"{info['backbone']} step {info['step']}")
    save_grid(real[:16], out / "real.png", title="real (validation)", synthetic=False)
    atomic_write_json(out / "metrics.json", {**metrics, "config": asdict(cfg)})
    atomic_write_text(
        out / "report.html",
        report_html(
            f"{info['backbone']} at step {info['step']}",
            metrics,
            {"generated": out / "generated.png", "real": out / "real.png"},
        ),
    )
    log.info("evaluation written to %s", out)
    return metrics
