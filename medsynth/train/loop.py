"""The training loop: build, restore, step, report, checkpoint; resumable at any step.

Running `train` again with the same `out` continues from the newest checkpoint;
a run that already reached `steps` is not redone. SIGTERM (preemption) writes a
checkpoint before exiting.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.evaluate.pictures import save_curves, save_grid
from medsynth.progress import Progress
from medsynth.storage import atomic_write_json, atomic_write_text, read_json
from medsynth.train.checkpoints import CONFIG_FILE, RunCheckpoints
from medsynth.train.config import TrainConfig
from medsynth.train.step import AdversarialStep, sample_latents
from medsynth.train.strategy import is_chief, make_strategy
from medsynth.train.telemetry import Telemetry, read_history

log = logging.getLogger("medsynth")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    metrics: dict[str, Any]


class _Preemption:
    """Turns SIGTERM into a flag the loop checks between steps, so it can checkpoint and exit."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self) -> _Preemption:
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def build_models(cfg: TrainConfig) -> tuple[tf.keras.Model, tf.keras.Model]:
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    generator = build_generator(
        cfg.image_size, latent_dim=cfg.latent_dim, width=cfg.generator_width, norm=cfg.generator_norm
    )
    discriminator = build_discriminator(
        cfg.image_size, backbone=cfg.backbone, weights=cfg.backbone_weights, mode=cfg.backbone_mode
    )
    return generator, discriminator


def train(cfg: TrainConfig) -> TrainResult:
    from medsynth.data.input import load_manifest, make_dataset, resolve_dataset

    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.seed)

    data_dir = resolve_dataset(cfg.data, cfg.image_size, cache_root=run_dir.parent / "_data", seed=cfg.seed)
    manifest = load_manifest(data_dir)
    if manifest["image_size"] != cfg.image_size:
        raise ConfigError(
            f"--data {cfg.data} holds {manifest['image_size']} px frames, not --image-size {cfg.image_size}"
        )

    strategy = make_strategy(cfg.strategy)
    chief = is_chief(strategy)
    with strategy.scope():
        generator, discriminator = build_models(cfg)
        g_opt = tf.keras.optimizers.Adam(cfg.lr_g, beta_1=cfg.beta_1)
        d_opt = tf.keras.optimizers.Adam(cfg.lr_d, beta_1=cfg.beta_1)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    dataset = make_dataset(data_dir, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    checkpoints = RunCheckpoints(
        run_dir,
        cfg.model_signature(),
        cfg.keep_checkpoints,
        step=step_var,
        generator=generator,
        discriminator=discriminator,
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        iterator=iterator,
    )
    restored = checkpoints.restore_latest()
    start = int(step_var.numpy())
    if restored:
        log.info("resuming from %s (step %d)", restored, start)
    if chief:
        info = {
            **cfg.to_dict(),
            "run_id": run_dir.parent.name,
            "dataset": str(data_dir),
            "dataset_hash": manifest.get("hash"),
        }
        atomic_write_json(run_dir / CONFIG_FILE, info)
        _truncate_history(run_dir, start)

    adversarial = AdversarialStep(
        generator,
        discriminator,
        g_opt,
        d_opt,
        cfg.batch_size,
        cfg.latent_dim,
        cfg.seed,
        cfg.label_smoothing,
        strategy,
    )
    telemetry = Telemetry(
        run_dir, {"backbone": cfg.backbone}, port=cfg.metrics_port if chief else None, enabled=chief
    )
    fixed_z = sample_latents(cfg.seed, 16, cfg.latent_dim)
    wall = time.monotonic()
    values: dict[str, float] = {}
    trained = 0
    try:
        with (
            _Preemption() as preemption,
            Progress(cfg.steps, f"train {cfg.backbone}", unit="step", initial=start) as bar,
        ):
            step = start
            while step < cfg.steps:
                t0 = time.perf_counter()
                real = next(iterator)
                t1 = time.perf_counter()
                out = adversarial.train_step(real, tf.constant(step, tf.int64))
                step += 1
                step_var.assign(step)
                trained += 1
                t2 = time.perf_counter()
                telemetry.step(t2 - t0, t1 - t0, cfg.batch_size)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    values = {k: float(v) for k, v in out.items()}
                    telemetry.scalars(step, values, bar.rate() * cfg.batch_size)
                bar.update(1, postfix=_postfix(values, bar.rate() * cfg.batch_size))
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    _write_samples(run_dir, generator, fixed_z, step, telemetry, chief)
                due = step % cfg.checkpoint_every == 0 or step == cfg.steps or preemption.requested
                if due and chief:
                    checkpoints.save(step)
                if preemption.requested:
                    log.warning("SIGTERM: checkpoint written at step %d, exiting", step)
                    raise SystemExit(143)
    finally:
        telemetry.close()

    seconds = time.monotonic() - wall
    metrics = {
        "steps": cfg.steps,
        "steps_this_run": trained,
        "images_per_s": (trained * cfg.batch_size / seconds) if trained else None,
        "wall_seconds": seconds,
        **{f"final_{k}": v for k, v in values.items()},
    }
    if chief:
        if start >= cfg.steps:
            log.info("run already finished at step %d; nothing to do", start)
            old = run_dir / "metrics.json"
            if old.exists():
                metrics = read_json(old)
        else:
            if checkpoints.manager.latest_checkpoint is None:
                checkpoints.save(cfg.steps)
            _write_curves(run_dir)
            atomic_write_json(run_dir / "metrics.json", metrics)
    return TrainResult(run_dir, max(start, cfg.steps), metrics)


def _postfix(values: dict[str, float], images_per_s: float) -> str:
    if not values:
        return f"{images_per_s:.1f} img/s"
    return f"D {values['d_loss']:.3f} G {values['g_loss']:.3f} {images_per_s:.1f} img/s"


def _write_samples(
    run_dir: Path, generator: tf.keras.Model, z: tf.Tensor, step: int, telemetry: Telemetry, chief: bool
) -> None:
    images = generator(z, training=False).numpy()
    if not chief:
        return
    telemetry.samples(step, images)
    save_grid(images, run_dir / "samples" / f"step_{step:06d}.png", title=f"step {step}")
    save_grid(images, run_dir / "samples" / "latest.png", title=f"step {step}")


def _write_curves(run_dir: Path) -> None:
    rows = read_history(run_dir)
    if not rows:
        return
    steps = [r["step"] for r in rows]
    save_curves(
        {"D loss": [r["d_loss"] for r in rows], "G loss": [r["g_loss"] for r in rows]},
        run_dir / "losses.png",
        steps=steps,
        title="BCE losses",
        ylabel="loss",
    )
    save_curves(
        {"D(x) real": [r["d_real"] for r in rows], "D(G(z)) generated": [r["d_fake"] for r in rows]},
        run_dir / "d_outputs.png",
        steps=steps,
        title="discriminator outputs",
        ylabel="mean D",
    )


def _truncate_history(run_dir: Path, step: int) -> None:
    """Rows logged after the checkpoint we resume from will be logged again; drop them."""
    rows = [r for r in read_history(run_dir) if r["step"] <= step]
    atomic_write_text(run_dir / "history.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
