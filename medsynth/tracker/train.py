"""Training the tracker: a fixed step budget over real (and synthetic) labelled frames, resumable.

Every random number a step uses — which frames, which flips, brightness and contrast — is drawn from
a generator keyed by (seed, step, stream), and each frame source is walked in per-epoch permutations
keyed the same way: a run stopped and started again draws what the uninterrupted run would have,
and with op determinism (on CPUs by default, medsynth.train.devices) it ends bitwise equal to it.
The step budget is the same whatever the data: a run on N real frames and one on N real + M synthetic
frames take the same number of steps of the same batch size, `synthetic_fraction` of each batch
synthetic when synthetic frames are given — or, with `pretrain_steps`, the first steps on them alone
and the rest on the real frames alone. The second source may as well be real frames labelled by
another tracker (self-training): one mechanism, whatever the frames are.

Classic augmentation (`augment`): left-right flips, brightness and contrast; `rotate_deg`, `scale`
and `gamma` add rotation and zoom about the centre (medsynth.data.geometry: the key points move
with the pixels, and those that leave the frame are masked off) and a gamma curve.

Files under `out`: config.json (TrackerConfig, frame side, counts of the data), checkpoints/
(model, optimizer, step; tf.train.CheckpointManager through medsynth.train.checkpoints), history.json
(the loss every `log_every` steps), loss.png, and with validation frames metrics.json's val_* metrics
and predictions.png.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth.data.geometry import Jitter, draw
from medsynth.data.keypoints import FramePoints, LabelledFrames, flip_lr
from medsynth.errors import DataError
from medsynth.pictures import save_curves
from medsynth.progress import Progress
from medsynth.storage import atomic_write_json, read_json
from medsynth.tracker.config import TrackerConfig
from medsynth.tracker.evaluate import score, to_input
from medsynth.tracker.figures import save_predictions
from medsynth.tracker.loss import heatmap_loss, targets
from medsynth.tracker.model import LEVELS, build_tracker
from medsynth.train.checkpoints import CONFIG_FILE, RunCheckpoints
from medsynth.train.devices import _gpu_capability, resolve_determinism

log = logging.getLogger("medsynth")

REAL, SYNTHETIC, AUGMENT = 0, 1, 2  # random-number streams of a step
CONTRAST = (0.8, 1.25)  # factor about the frame's mean
BRIGHTNESS = 0.1  # shift, in the network's [-1, 1] units
PICTURE_FRAMES = 8


def batch_indices(n: int, count: int, seed: int, step: int, stream: int) -> np.ndarray:
    """`count` indices into n frames for `step`: positions step·count … of an endless walk through
    per-epoch permutations keyed by (seed, stream, epoch), so each frame is seen once an epoch."""
    start = step * count
    epochs = range(start // n, (start + count - 1) // n + 1)
    walk = np.concatenate([np.random.default_rng([seed, stream, e]).permutation(n) for e in epochs])
    offset = start - epochs[0] * n
    return walk[offset : offset + count]


def make_batch(
    cfg: TrackerConfig, real: LabelledFrames, synthetic: LabelledFrames | None, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step `step`'s batch: frames float32 [B, S, S, 1] in [-1, 1], points, classes, mask (augmented)."""
    n_syn = cfg.synthetic_per_batch(synthetic is not None and len(synthetic) > 0, step)
    parts = []
    if n_syn < cfg.batch_size:
        parts.append(real.take(batch_indices(len(real), cfg.batch_size - n_syn, cfg.seed, step, REAL)))
    if n_syn:
        parts.append(synthetic.take(batch_indices(len(synthetic), n_syn, cfg.seed, step, SYNTHETIC)))
    b = LabelledFrames.concat(parts)
    x, points, mask = to_input(b.images), b.points.copy(), b.mask.copy()
    if cfg.augment:
        rng = np.random.default_rng([cfg.seed, AUGMENT, step])
        flip = rng.random(len(x)) < 0.5
        contrast = rng.uniform(*CONTRAST, size=len(x)).astype(np.float32)
        shift = rng.uniform(-BRIGHTNESS, BRIGHTNESS, size=len(x)).astype(np.float32)
        x[flip] = x[flip, :, ::-1]
        points[flip] = flip_lr(points[flip], b.size)
        if cfg.rotate_deg or cfg.scale:
            turn = Jitter(flip_lr=0.0, rotate_deg=cfg.rotate_deg, scale=cfg.scale, shift=0.0)
            _turn(x, points, b.classes, mask, rng, turn)
        if cfg.gamma:
            power = np.exp(rng.uniform(-cfg.gamma, cfg.gamma, size=len(x))).astype(np.float32)
            x = np.clip((x + 1.0) / 2.0, 0.0, 1.0) ** power[:, None, None, None] * 2.0 - 1.0
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        x = np.clip((x - mean) * contrast[:, None, None, None] + mean + shift[:, None, None, None], -1.0, 1.0)
    return x.astype(np.float32), points.astype(np.float32), b.classes, mask


def _turn(
    x: np.ndarray,
    points: np.ndarray,
    classes: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    jitter: Jitter,
) -> None:
    """Rotate and scale each frame of `x` [B, S, S, 1] about its centre and its key points with it (in
    place); a point moved off the frame is masked off."""
    size = x.shape[1]
    for i in range(len(x)):
        move = draw(rng, size, jitter)
        x[i, ..., 0] = move.warp(x[i, ..., 0])
        points[i] = move.points(points[i])
        mask[i] &= FramePoints(points[i], classes[i]).inside(size)


def _check_frames(real: LabelledFrames, synthetic: LabelledFrames | None, val: LabelledFrames | None) -> int:
    if len(real) == 0:
        raise DataError("no real labelled frames to train the tracker on")
    size = real.size
    if size % 2**LEVELS:
        raise DataError(f"frames of {size} px: the tracker needs a side that is a multiple of {2**LEVELS}")
    for name, frames in (("synthetic", synthetic), ("validation", val)):
        if frames is not None and len(frames) and frames.size != size:
            raise DataError(f"{name} frames are {frames.size} px, the real ones {size} px; use one size")
    return size


def train_tracker(
    cfg: TrackerConfig,
    real: LabelledFrames,
    synthetic: LabelledFrames | None = None,
    val: LabelledFrames | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train to `cfg.steps` (continuing from the newest checkpoint under `cfg.out`); the run's metrics.

    `source` says where the frames came from (medsynth.tracker.frames), recorded in config.json.
    The metrics hold the steps, the speed and the last logged loss, and `val_*` metrics of the final
    model on `val` (medsynth.tracker.metrics) when it is given.
    """
    size = _check_frames(real, synthetic, val)
    if cfg.pretrain_steps and (synthetic is None or len(synthetic) == 0):
        raise DataError("--pretrain-steps pre-trains on the second source: give it frames (--synthetic)")
    deterministic = resolve_determinism(cfg.deterministic, _gpu_capability())
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    tf.keras.utils.set_random_seed(cfg.seed)
    out = Path(cfg.out)
    model = build_tracker(size, cfg.width, cfg.norm)
    optimizer = tf.keras.optimizers.Adam(cfg.lr)
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoints = RunCheckpoints(
        out,
        {"model": "tracker", "image_size": size, "width": cfg.width, "norm": cfg.norm},
        cfg.keep_checkpoints,
        model=model,
        optimizer=optimizer,
        step=step_var,
    )
    restored = checkpoints.restore_latest()
    start = int(step_var.numpy())
    if restored:
        log.info("tracker: resuming from %s (step %d)", restored, start)
    n_syn = cfg.synthetic_per_batch(synthetic is not None and len(synthetic) > 0)
    info = {
        **cfg.to_dict(),
        "kind": "tracker",
        "image_size": size,
        "real_frames": len(real),
        "synthetic_frames": len(synthetic) if synthetic is not None else 0,
        "synthetic_per_batch": n_syn,
        "val_frames": len(val) if val is not None else 0,
        "source": source or {},
        "settings": {"op_determinism": deterministic},
    }
    atomic_write_json(out / CONFIG_FILE, info)
    history = [r for r in _read_history(out) if r["step"] <= start]

    @tf.function(reduce_retracing=True)
    def train_step(x: tf.Tensor, points: tf.Tensor, classes: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
        soft, positives = targets(points, classes, mask, size)
        with tf.GradientTape() as tape:
            loss = heatmap_loss(model(x, training=True), soft, positives, cfg.loss)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    wall = time.monotonic()
    trained = 0
    with Progress(cfg.steps, "train tracker", unit="step", initial=start) as bar:
        step = start
        while step < cfg.steps:
            loss = train_step(*make_batch(cfg, real, synthetic, step))
            step += 1
            trained += 1
            step_var.assign(step)
            if step % cfg.log_every == 0 or step == cfg.steps:
                history.append({"step": step, "loss": float(loss)})
                bar.update(1, postfix=f"loss {history[-1]['loss']:.3f}")
            else:
                bar.update(1)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                checkpoints.save(step)
                atomic_write_json(out / "history.json", history)
    seconds = time.monotonic() - wall
    return _record_end(cfg, out, model, val, history, trained, seconds, start)


def _read_history(out: Path) -> list[dict[str, float]]:
    path = out / "history.json"
    return read_json(path) if path.exists() else []


def _record_end(
    cfg: TrackerConfig,
    out: Path,
    model: tf.keras.Model,
    val: LabelledFrames | None,
    history: list[dict[str, float]],
    trained: int,
    seconds: float,
    start: int,
) -> dict[str, Any]:
    """metrics.json, the loss curve and the predictions picture; a finished run keeps its metrics."""
    old = out / "metrics.json"
    if trained == 0 and old.exists():
        log.info("tracker run already finished at step %d; nothing to do", start)
        return read_json(old)
    metrics: dict[str, Any] = {
        "steps": cfg.steps,
        "steps_this_run": trained,
        "steps_per_s": trained / seconds if trained and seconds > 0 else None,
        "final_loss": history[-1]["loss"] if history else None,
    }
    if history:
        save_curves(
            {f"{cfg.loss} loss": [r["loss"] for r in history]},
            out / "loss.png",
            steps=[r["step"] for r in history],
            title="tracker training loss",
            ylabel="loss",
        )
    if val is not None and len(val):
        val_metrics, found = score(model, val, cfg.threshold, cfg.tolerance)
        metrics.update({f"val_{k}": v for k, v in val_metrics.items()})
        k = min(PICTURE_FRAMES, len(val))
        save_predictions(
            val.images[:k],
            [val.frame_points(i) for i in range(k)],
            [d.points for d in found[:k]],
            out / "predictions.png",
            title=f"tracker step {cfg.steps}",
            synthetic=val.synthetic,
        )
    atomic_write_json(out / "metrics.json", metrics)
    return metrics
