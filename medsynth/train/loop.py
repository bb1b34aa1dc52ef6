"""The training loop: build, restore, step, report, checkpoint; resumable at any step.

Running `train` again with the same `out` continues from the newest checkpoint;
a run that already reached `steps` is not redone. `max_minutes` ends a call early, at a step
boundary with a checkpoint, like a finished run short of `steps` (metrics say so). SIGTERM
(preemption) writes a checkpoint before exiting with 143; with several workers they agree on the step
first, so every worker stops at the same one.

Every worker reads the same global batches (same files, same seed) and takes its
own slice of each, so a run computes the same numbers on one device, N GPUs or N
workers, and the chief's checkpoint (models, optimizers, step, iterator) is all any
worker needs to resume exactly.

With `--out gs://…` the run trains in a local working directory and object
storage gets every checkpoint (marker last) and the other outputs; a new pod,
on any node, resumes from the newest complete checkpoint in the bucket.

This module is the loop; what it runs lives beside it: `devices` (precision, determinism, XLA),
`models` (G, D, optimizers, G's average: the TrainState), `feed` (each replica's slice of the
batch), `outputs` (where the run writes), `step` (one adversarial update), `checkpoints`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth import storage
from medsynth.errors import CheckpointError, ConfigError
from medsynth.models.summary import count_params
from medsynth.pictures import save_curves, save_grid
from medsynth.progress import Progress
from medsynth.storage import atomic_write_json, atomic_write_text, read_json
from medsynth.train.augment import parse_policy
from medsynth.train.checkpoints import CONFIG_FILE, RunCheckpoints, write_layouts
from medsynth.train.config import TrainConfig
from medsynth.train.devices import _gpu_capability, resolve_determinism, resolve_precision, resolve_xla
from medsynth.train.fastpath import FastPath
from medsynth.train.fastpath import choose as choose_fast_path
from medsynth.train.feed import Feed, layout_bank
from medsynth.train.models import (
    TrainState,
    _optimizer,  # noqa: F401 - bench/train_step.py imports it from here
    build_models,  # noqa: F401 - bench/train_step.py imports it from here
    build_train_state,
)
from medsynth.train.outputs import RunOutputs, run_outputs
from medsynth.train.step import AdversarialStep, sample_latents
from medsynth.train.strategy import Distribution, make_distribution
from medsynth.train.telemetry import Telemetry, read_history

log = logging.getLogger("medsynth")

SAMPLES = 16  # frames per sample grid
PREEMPTED_EXIT = 143  # 128 + SIGTERM, what Kubernetes expects from a container stopped by SIGTERM


@dataclass
class TrainResult:
    run_dir: Path  # local directory holding the run's files (a working copy when `uri` is gs://)
    step: int
    metrics: dict[str, Any]
    uri: str = ""  # where the run lives: `--out` as given
    settings: dict[str, Any] = field(default_factory=dict)  # strategy, replicas, precision, XLA as used
    generator: tf.keras.Model | None = field(default=None, repr=False)  # the trained models, in memory
    discriminator: tf.keras.Model | None = field(default=None, repr=False)
    sampled: tf.keras.Model | None = field(default=None, repr=False)  # G's moving average, or G when off


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


@dataclass
class _Run:
    """One call of `train`, set up: what the step loop and the bookkeeping around it share."""

    dist: Distribution
    out: str  # --out without its trailing slash
    outputs: RunOutputs
    data_dir: Path
    manifest: dict[str, Any]
    xla: bool
    state: TrainState
    feed: Feed
    checkpoints: RunCheckpoints
    adversarial: AdversarialStep
    adopted: str | None  # the run this one continues (--init-from), if it started from its checkpoint
    start: int  # the step this call starts at
    settings: dict[str, Any]  # strategy, replicas, workers, precision, XLA: as used
    layouts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # --condition keypoints: layout bank

    @property
    def chief(self) -> bool:
        return self.dist.is_chief

    @property
    def dir(self) -> Path:
        return self.outputs.local


def train(cfg: TrainConfig) -> TrainResult:
    """Train to `cfg.steps`, continuing from the newest checkpoint under `cfg.out` (module docstring)."""
    run = _set_up(cfg)
    if run.chief:
        _record_start(cfg, run)
    values, trained, seconds, first = _step_loop(cfg, run)
    metrics = _record_end(cfg, run, values, trained, seconds, first)
    return TrainResult(
        run.dir, max(run.start, metrics["steps"]), metrics, uri=run.out, settings=run.settings,
        generator=run.state.generator, discriminator=run.state.discriminator, sampled=run.state.sampled,
    )


# ----------------------------------------------------------------------------------------------- set-up


def _set_up(cfg: TrainConfig) -> _Run:
    """Devices, distribution, outputs, data, models and step, restored from the newest checkpoint."""
    capability = _gpu_capability()
    deterministic = resolve_determinism(cfg.deterministic, capability)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    # Strategies set up devices and collectives: before any other TensorFlow op runs.
    dist = make_distribution(cfg.strategy, cfg.gpus)
    dist.check_batch(cfg.batch_size)
    tf.keras.utils.set_random_seed(cfg.seed)

    out = str(cfg.out).rstrip("/")
    outputs, data_cache = run_outputs(out, dist)
    data_dir, manifest = _dataset(cfg, data_cache)
    policy = resolve_precision(cfg.mixed_precision, capability)
    xla = resolve_xla(cfg.xla, capability, dist, deterministic)
    fast = choose_fast_path(cfg.mixed_precision, capability, frozen_features=cfg.backbone_mode == "frozen")
    state = build_train_state(cfg, dist, policy, fast)
    feed = Feed(dist, data_dir, cfg)
    layouts = layout_bank(data_dir, cfg) if cfg.condition == "keypoints" else None
    checkpoints = RunCheckpoints(
        outputs.local,
        {**cfg.model_signature(), "loss_scale": policy == "mixed_float16"},
        cfg.keep_checkpoints,
        remote=f"{outputs.remote}/checkpoints" if outputs.remote else None,
        write=dist.is_chief,
        # MultiWorkerMirrored: saving reads sync-on-read variables, a collective every worker joins.
        collective=dist.name == "multiworker",
        **state.checkpointed(feed.iterator),
    )
    restored = checkpoints.restore_latest(cfg.init_from, cfg.steps)
    adversarial = adversarial_step(cfg, dist, state, xla, fast)
    start = _agreed_start(dist, adversarial, state)
    settings = {
        "strategy": dist.name,
        "replicas": dist.replicas,
        "workers": dist.workers,
        "precision": policy,
        "xla": xla,
        "fast_path": fast.settings(),
    }
    if restored:
        log.info("%s from %s (step %d)", "continuing" if checkpoints.adopted else "resuming", restored, start)
    log.info("training with %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    return _Run(
        dist, out, outputs, data_dir, manifest, xla, state, feed, checkpoints, adversarial,
        checkpoints.adopted, start, settings, layouts,
    )


def _dataset(cfg: TrainConfig, cache: Path) -> tuple[Path, dict[str, Any]]:
    """The prepared data set `--data` names (prepared or fetched into `cache` first when it must be)."""
    from medsynth.data.input import load_manifest, resolve_dataset

    data_dir = resolve_dataset(cfg.data, cfg.image_size, cache_root=cache, seed=cfg.seed)
    manifest = load_manifest(data_dir)
    if manifest["image_size"] != cfg.image_size:
        raise ConfigError(
            f"--data {cfg.data} holds {manifest['image_size']} px frames, not --image-size {cfg.image_size}"
        )
    return data_dir, manifest


def adversarial_step(
    cfg: TrainConfig, dist: Distribution, state: TrainState, xla: bool, fast: FastPath | None = None
) -> AdversarialStep:
    """The step `cfg` trains with (also what bench/train_step.py times)."""
    if cfg.r1_gamma > 0:
        from medsynth.models.discriminator import bilinear_resizes

        resizes = bilinear_resizes(state.discriminator)
        if resizes:
            raise ConfigError(
                f"--r1-gamma {cfg.r1_gamma}: R1 differentiates D's input gradient, and TensorFlow has no "
                f"second derivative of bilinear resizing, which this D does ({', '.join(resizes[:3])}); "
                "use --r1-gamma 0, or --d-head paper with frames at the backbone's input size")
    return AdversarialStep(
        state.generator,
        state.discriminator,
        state.g_opt,
        state.d_opt,
        cfg.batch_size,
        cfg.latent_dim,
        cfg.seed,
        cfg.label_smoothing,
        dist.strategy,
        hvd=dist.hvd,
        jit_compile=xla,
        r1_gamma=cfg.r1_gamma,
        augment=parse_policy(cfg.d_augment),
        loss=cfg.loss,
        condition=cfg.condition,
        keypoint_mismatch=cfg.keypoint_mismatch,
        cutout=cfg.cutout,
        separate_passes=cfg.d_passes == "separate",
        fresh_draws=cfg.draws == "fresh",
        fast_path=fast,
    )


def _agreed_start(dist: Distribution, adversarial: AdversarialStep, state: TrainState) -> int:
    """The restored step, the same on every worker (under Horovod: rank 0's state, broadcast)."""
    start = int(state.step.numpy())
    if dist.workers > 1:
        hi = int(adversarial.agree(tf.constant(float(start))).numpy())
        lo = -int(adversarial.agree(tf.constant(-float(start))).numpy())
        if hi != lo:
            raise CheckpointError(
                f"the workers resumed from different steps ({lo} to {hi}): every worker must see the "
                "chief's checkpoints; use a shared --out (gs://…)"
            )
    if dist.hvd is not None:
        # Rank 0's state is the truth: models, optimizer slots and the step, after its restore.
        dist.hvd.broadcast_variables(state.variables(), root_rank=0)
    return start


def _record_start(cfg: TrainConfig, run: _Run) -> None:
    """The chief's files before the first step: config and settings, history up to the start."""
    run.outputs.pull("history.jsonl", "metrics.json")
    history = f"{run.adopted}/history.jsonl"
    if run.adopted and storage.exists(history):  # the loss curves start where the continued run started
        atomic_write_text(run.dir / "history.jsonl", storage.read_text(history))
    info = {
        **cfg.to_dict(),
        "run_id": Path(run.out).parent.name,
        "dataset": str(run.data_dir),
        "dataset_hash": run.manifest.get("hash"),
        "settings": run.settings,
    }
    atomic_write_json(run.dir / CONFIG_FILE, info)
    if run.layouts is not None:
        write_layouts(run.dir, run.layouts, cfg.image_size)
    _truncate_history(run.dir, run.start)
    run.outputs.push()


# ------------------------------------------------------------------------------------------------ steps


def _step_loop(cfg: TrainConfig, run: _Run) -> tuple[dict[str, float], int, float]:
    """Steps from `run.start` to `cfg.steps`, reporting, sampling and checkpointing on the way.

    Returns the last reported losses, the steps this call took and the seconds they took. SIGTERM
    ends it after the step under way, with a checkpoint, in SystemExit(PREEMPTED_EXIT).
    """
    chief, dist, state = run.chief, run.dist, run.state
    telemetry = Telemetry(
        run.dir,
        {"backbone": cfg.backbone},
        port=cfg.metrics_port if chief else None,
        enabled=chief,
        pushgateway=cfg.pushgateway,
        grouping={"run": Path(run.out).name or "run"},
    )
    samples = _SampleInputs.of(cfg, run.layouts)
    wall = time.monotonic()
    limit = cfg.max_minutes * 60 if cfg.max_minutes else None
    values: dict[str, float] = {}
    trained, first = 0, 0.0
    bar_stream = sys.stderr if chief else open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        with (
            _Preemption() as preemption,
            Progress(
                cfg.steps, f"train {cfg.backbone}", unit="step", initial=run.start, stream=bar_stream
            ) as bar,
        ):
            step = run.start
            while step < cfg.steps:
                t0 = time.perf_counter()
                real = next(run.feed)
                t1 = time.perf_counter()
                out_values = _train_step(cfg, run, real, step)
                step += 1
                state.step.assign(step)
                if state.average:
                    with dist.strategy.scope():
                        state.average.update(step)
                trained += 1
                if trained == 1:  # tracing and compiling the step: said apart, not counted in img/s
                    first = time.monotonic() - wall
                    log.info("first step: %.1f s (tracing and compiling the step; not counted in img/s)",
                             first)
                # 2: SIGTERM (exit to be rescheduled), 1: the time limit (end like a finished run)
                stop = 2.0 if preemption.requested else float(
                    limit is not None and time.monotonic() - wall >= limit)
                if dist.workers > 1:  # one worker's SIGTERM or clock stops all of them at the same step
                    stop = float(run.adversarial.agree(tf.constant(stop)))
                t2 = time.perf_counter()
                telemetry.step(t2 - t0, t1 - t0, cfg.batch_size)
                if step % cfg.log_every == 0 or step == cfg.steps or stop:
                    values = {k: float(v) for k, v in out_values.items()}
                    telemetry.scalars(step, values, bar.rate() * cfg.batch_size)
                bar.update(1, postfix=_postfix(values, bar.rate() * cfg.batch_size))
                if step % cfg.sample_every == 0 or step == cfg.steps or stop:
                    # Every worker runs G: under MultiWorkerMirrored, reading BN's moving statistics
                    # (sync-on-read variables) is a collective that all workers must join.
                    _write_samples(run.dir, state.sampled, samples, step, telemetry, chief)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                    run.checkpoints.save(step)
                    if chief:
                        run.outputs.push()
                if stop == 2.0:
                    log.warning("SIGTERM: checkpoint written at step %d, exiting", step)
                    raise SystemExit(PREEMPTED_EXIT)
                if stop:
                    log.warning("--max-minutes %g reached: stopped at step %d of %d, with a checkpoint "
                                "(run again to continue)", cfg.max_minutes, step, cfg.steps)
                    break
    finally:
        telemetry.close()
        if bar_stream is not sys.stderr:
            bar_stream.close()
    return values, trained, time.monotonic() - wall, first


def _train_step(cfg: TrainConfig, run: _Run, real: Any, step: int) -> dict[str, tf.Tensor]:
    """One adversarial step; XLA's refusals of this model become a ConfigError that says what to do."""
    try:
        return run.adversarial.train_step(real, tf.constant(step, tf.int64))
    except tf.errors.UnimplementedError as e:
        if run.xla and "deterministic XLA" in str(e):
            raise ConfigError(
                "--xla on: XLA has no deterministic gradient for an op of this backbone "
                f"({cfg.backbone}: MaxPool) and training runs with op determinism; use --xla off"
            ) from e
        raise
    except tf.errors.InvalidArgumentError as e:
        if run.xla and "unsupported operations" in str(e):
            ops = re.findall(r"_JIT: (\w+)", str(e)) or ["an op without an XLA kernel"]
            raise ConfigError(
                f"--xla on: XLA cannot compile this model's step ({ops[0]}); use --xla off"
            ) from e
        raise


# ------------------------------------------------------------------------------------------ bookkeeping


def _record_end(
    cfg: TrainConfig, run: _Run, values: dict[str, float], trained: int, seconds: float, first: float = 0.0,
) -> dict[str, Any]:
    """The run's metrics; the chief writes them, with the loss curves and a final checkpoint.

    `images_per_s` counts the steps after the first (whose `first_step_seconds` are tracing and
    compilation); a one-step run has only the first. A run that had already finished keeps the
    metrics it wrote then.
    """
    g_count, d_count = count_params(run.state.generator), count_params(run.state.discriminator)
    reached = run.start + trained if trained else cfg.steps  # short of --steps when --max-minutes ended it
    metrics = {
        "steps": reached,
        **({"steps_planned": cfg.steps, "stopped_by": "max_minutes"} if reached < cfg.steps else {}),
        "g_params": g_count.total,
        "d_params": d_count.total,
        "d_trainable_params": d_count.trainable,
        "steps_this_run": trained,
        "images_per_s": _rate(trained, seconds, first, cfg.batch_size),
        "first_step_seconds": first if trained else None,
        "wall_seconds": seconds,
        **{f"final_{k}": v for k, v in values.items()},
    }
    if run.chief:
        if run.start >= cfg.steps and not run.adopted:
            log.info("run already finished at step %d; nothing to do", run.start)
            old = run.dir / "metrics.json"
            if old.exists():
                metrics = read_json(old)
        else:
            if run.checkpoints.manager.latest_checkpoint is None:
                run.checkpoints.save(reached)
            _write_curves(run.dir)
            atomic_write_json(run.dir / "metrics.json", metrics)
        run.outputs.push()
    return metrics


def _rate(trained: int, seconds: float, first: float, batch: int) -> float | None:
    """Images per second after the first step (or of the first, when it is the only one)."""
    if trained == 0:
        return None
    if trained == 1 or seconds <= first:
        return batch / seconds
    return (trained - 1) * batch / (seconds - first)


def _postfix(values: dict[str, float], images_per_s: float) -> str:
    if not values:
        return f"{images_per_s:.1f} img/s"
    return f"D {values['d_loss']:.3f} G {values['g_loss']:.3f} {images_per_s:.1f} img/s"


@dataclass
class _SampleInputs:
    """What the sample grids are drawn from: a fixed latent batch, and with key points a fixed set of
    training layouts (their heat maps for G, their points to mark on the grid)."""

    z: tf.Tensor
    maps: tf.Tensor | None = None
    marks: list[tuple[np.ndarray, np.ndarray]] | None = None

    @classmethod
    def of(cls, cfg: TrainConfig, layouts: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> _SampleInputs:
        z = sample_latents(cfg.seed, SAMPLES, cfg.latent_dim)
        if layouts is None:
            return cls(z)
        from medsynth.data.keypoints import heatmaps

        points, classes, mask = (part[:SAMPLES] for part in layouts)
        marks = [(p[m], c[m]) for p, c, m in zip(points, classes, mask, strict=True)]
        return cls(z[: len(marks)], heatmaps(points, classes, mask, cfg.image_size), marks)


def _write_samples(
    run_dir: Path, generator: tf.keras.Model, samples: _SampleInputs, step: int, telemetry: Telemetry,
    chief: bool,
) -> None:
    inputs = samples.z if samples.maps is None else [samples.z, samples.maps]
    images = tf.cast(generator(inputs, training=False), tf.float32).numpy()
    if not chief:
        return
    telemetry.samples(step, images)
    for name in (f"step_{step:06d}.png", "latest.png"):
        save_grid(images, run_dir / "samples" / name, title=f"step {step}", keypoints=samples.marks)


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
