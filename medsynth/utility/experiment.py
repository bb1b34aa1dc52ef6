"""The utility experiment: does adding synthetic labelled frames to N real ones make a tracker better?

For every seed and every N: the N labelled frames are written as their own data set (a seeded
subset of the training split; the held-out split is the parent's, untouched); a key-point-conditioned
generator trains on those N frames alone; M synthetic frames are made for layouts drawn from the
same N (`layouts.sample_layouts`); then trackers with the same step budget and the same seed train on
the N real frames alone and on N + M, and are evaluated on the held-out real frames. Nothing of the
held-out frames, and nothing of the other training frames, reaches the generator or the trackers.

Each part is kept when it is finished (the subset, the generator run, the synthetic frames, each
tracker run), so a stopped experiment continues where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsynth import storage
from medsynth.data.keypoints import LabelledFrames, heatmaps
from medsynth.errors import ConfigError, DataError
from medsynth.utility import report
from medsynth.utility.layouts import Jitter, sample_layouts

log = logging.getLogger("medsynth")

RESULTS = "results.json"


@dataclass
class UtilityConfig:
    data: str  # a prepared, labelled data set, or a source (builtin://phantom, a folder, …)
    out: str  # local directory of the experiment (resumable)
    image_size: int = 64
    n_real: tuple[int, ...] = (64, 256)
    n_synthetic: tuple[int, ...] = (1000, 4000)
    seeds: tuple[int, ...] = (0, 1, 2)
    gan_steps: int = 1000
    gan_batch_size: int = 16
    gan_backbone: str = "convnet"
    tracker_steps: int = 1500
    tracker_batch_size: int = 32
    synthetic_fraction: float = 0.5  # share of each tracker batch drawn from the synthetic frames
    phantom_frames: int = 3072  # when `data` is builtin://phantom
    jitter: Jitter = field(default_factory=Jitter)

    def validate(self) -> None:
        for name in ("n_real", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} needs at least one value")
        if any(n < 1 for n in self.n_real):
            raise ConfigError(f"--n-real values must be >= 1, got {list(self.n_real)}")
        if any(m < 1 for m in self.n_synthetic):
            raise ConfigError(f"--n-synthetic values must be >= 1, got {list(self.n_synthetic)}")
        if self.gan_steps < 1 or self.tracker_steps < 1:
            raise ConfigError("--gan-steps and --tracker-steps must be >= 1")
        if not 0.0 < self.synthetic_fraction < 1.0:
            raise ConfigError(f"--synthetic-fraction must be in (0, 1), got {self.synthetic_fraction}")
        if storage.is_gcs(self.out):
            raise ConfigError(f"--out {self.out}: the experiment writes a local directory; copy it up after")


def run_utility(cfg: UtilityConfig) -> dict[str, Any]:
    """Run (or continue) every arm, then write results.json, utility.md and utility.png in `out`."""
    from medsynth.cache import cache_root
    from medsynth.data.input import labelled_frames, resolve_dataset

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_json(out / "config.json", storage.jsonable(asdict(cfg)))
    dataset = resolve_dataset(
        cfg.data, cfg.image_size, cache_root("work"), seed=0, phantom_frames=cfg.phantom_frames
    )
    val = labelled_frames(dataset, "val")
    if len(val) == 0:
        raise DataError(f"data set {cfg.data} has no labelled held-out (val) frames to judge trackers on")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for seed in cfg.seeds:
        for n in cfg.n_real:
            results += _cell(cfg, dataset, val, n, seed, out / f"n{n}-seed{seed}")
            log.info(
                "utility: N=%d seed %d done (%.0f min so far)", n, seed, (time.monotonic() - started) / 60
            )
    rows = report.summarise(results)
    verdict = report.overall_verdict(rows)
    notes = [
        f"held-out real frames: {len(val)} (the data set's val split, patients never seen in training)",
        f"generator: {cfg.gan_backbone} D, {cfg.gan_steps} steps on the N real frames only; layouts drawn "
        "from the same N frames (mirror, ±{:.0f}°, ±{:.0%} scale, ±{:.0%} shift)".format(
            cfg.jitter.rotate_deg, cfg.jitter.scale, cfg.jitter.shift
        ),
        f"tracker: {cfg.tracker_steps} steps of {cfg.tracker_batch_size} frames in every arm; with synthetic "
        f"frames {cfg.synthetic_fraction:.0%} of each batch is synthetic",
    ]
    summary = {
        "config": storage.jsonable(asdict(cfg)),
        "dataset": str(dataset),
        "val_frames": len(val),
        "results": results,
        "rows": rows,
        "verdict": verdict,
    }
    storage.atomic_write_json(out / RESULTS, storage.jsonable(summary))
    storage.atomic_write_text(out / "utility.md", report.markdown(rows, notes))
    report.plot(rows, out / "utility.png")
    grids = sorted(out.glob("n*-seed*/synthetic.png"))
    if grids:
        storage.atomic_write_bytes(out / "synthetic.png", grids[0].read_bytes())
    return summary


def _cell(
    cfg: UtilityConfig, dataset: Path, val: LabelledFrames, n: int, seed: int, cell: Path
) -> list[dict[str, Any]]:
    """The arms of one (N, seed): real only, then real + each M."""
    from medsynth.data.input import labelled_frames
    from medsynth.data.subset import write_labelled_subset

    subset = Path(write_labelled_subset(dataset, n, seed, cell / "data"))
    real = labelled_frames(subset, "train")
    if len(real) < n:
        raise DataError(f"data set {cfg.data} has {len(real)} labelled training frames, fewer than N = {n}")
    rows = [_arm(cfg, n, 0, seed, real, None, val, cell / "tracker-m0")]
    if cfg.n_synthetic:
        generator_run = cell / "generator"
        _train_generator(cfg, subset, len(real), seed, generator_run)
        pool = _synthetic_pool(
            generator_run, real, max(cfg.n_synthetic), seed, cfg.jitter, cell / "synthetic.npz"
        )
        _grid(pool, cell / "synthetic.png", f"N={n} seed {seed}: synthetic frames for drawn layouts")
        for m in cfg.n_synthetic:
            rows.append(_arm(cfg, n, m, seed, real, pool.take(np.arange(m)), val, cell / f"tracker-m{m}"))
    return rows


def _arm(
    cfg: UtilityConfig,
    n: int,
    m: int,
    seed: int,
    real: LabelledFrames,
    synthetic: LabelledFrames | None,
    val: LabelledFrames,
    run: Path,
) -> dict[str, Any]:
    from medsynth.tracker.train import TrackerConfig, train_tracker

    done = run / "metrics.json"
    if done.exists():
        metrics = storage.read_json(done)
    else:
        tcfg = TrackerConfig(
            out=str(run),
            steps=cfg.tracker_steps,
            batch_size=cfg.tracker_batch_size,
            seed=seed,
            synthetic_fraction=cfg.synthetic_fraction,
        )
        metrics = train_tracker(tcfg, real, synthetic, val)
    log.info("utility: N=%d M=%d seed %d: %s", n, m, seed, _brief(metrics))
    return {"n_real": n, "n_synthetic": m, "seed": seed, "metrics": metrics, "run": str(run)}


def _train_generator(cfg: UtilityConfig, subset: Path, frames: int, seed: int, run: Path) -> None:
    """The conditional generator of one (N, seed), on the subset's `frames` training frames only; its
    batch is at most a power of two of them (the matching-aware term pairs frames: an even batch)."""
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    train(
        TrainConfig(
            data=str(subset),
            out=str(run),
            image_size=cfg.image_size,
            steps=cfg.gan_steps,
            batch_size=min(cfg.gan_batch_size, _pow2_floor(frames)),
            seed=seed,
            backbone=cfg.gan_backbone,
            condition="keypoints",
            checkpoint_every=max(1, cfg.gan_steps // 2),
        )
    )


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


def _synthetic_pool(
    run: Path, real: LabelledFrames, m: int, seed: int, jitter: Jitter, path: Path
) -> LabelledFrames:
    """`m` synthetic labelled frames from the run's generator (its moving average), kept in `path`."""
    if path.exists():
        with np.load(path) as z:
            if len(z["images"]) >= m:
                return LabelledFrames(z["images"][:m], z["points"][:m], z["classes"][:m], z["mask"][:m], True)
    points, classes, mask, _ = sample_layouts(real, m, seed, jitter)
    images = synthesize(run, points, classes, mask, seed)
    pool = LabelledFrames(images, points, classes, mask, synthetic=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, points=points, classes=classes, mask=mask, synthetic=True)
    tmp.replace(path)
    return pool


def synthesize(
    run: str | Path, points: np.ndarray, classes: np.ndarray, mask: np.ndarray, seed: int, batch: int = 256
) -> np.ndarray:
    """uint8 frames [m, S, S] the run's conditional generator makes for the given layouts."""
    import tensorflow as tf

    from medsynth.pictures import to_uint8
    from medsynth.train.checkpoints import load_generator

    generator, info = load_generator(run)
    size, latent = int(info["image_size"]), int(info["latent_dim"])
    out = np.empty((len(points), size, size), np.uint8)
    for start in range(0, len(points), batch):
        end = min(start + batch, len(points))
        z = tf.random.stateless_normal([end - start, latent], seed=[seed, start])
        h = heatmaps(points[start:end], classes[start:end], mask[start:end], size)
        out[start:end] = to_uint8(generator([z, h], training=False).numpy())
    return out


def _grid(frames: LabelledFrames, path: Path, title: str, count: int = 16) -> None:
    """The first synthetic frames with the key points they were asked for (tip red, bifurcations green)."""
    from medsynth.pictures import save_grid

    k = min(count, len(frames))
    marks = [(f.points, f.classes) for f in (frames.frame_points(i) for i in range(k))]
    save_grid(frames.images[:k], path, title=title, synthetic=True, keypoints=marks)


def _brief(metrics: dict[str, Any]) -> str:
    keys = ("val_tip_error_mean_px", "val_tip_pck5", "val_bif_f1")
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in keys if isinstance(metrics.get(k), (int, float)))

