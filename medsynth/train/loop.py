"""The training loop: build, restore, step, report, checkpoint; resumable at any step.

Running `train` again with the same `out` continues from the newest checkpoint;
a run that already reached `steps` is not redone. SIGTERM (preemption) writes a
checkpoint before exiting with 143; with several workers they agree on the step
first, so every worker stops at the same one.

Every worker reads the same global batches (same files, same seed) and takes its
own slice of each, so a run computes the same numbers on one device, N GPUs or N
workers, and the chief's checkpoint (models, optimizers, step, iterator) is all any
worker needs to resume exactly.

With `--out gs://…` the run trains in a local working directory and object
storage gets every checkpoint (marker last) and the other outputs; a new pod,
on any node, resumes from the newest complete checkpoint in the bucket.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tensorflow as tf

from medsynth import storage
from medsynth.errors import CheckpointError, ConfigError
from medsynth.models.layers import fuse_batch_norm
from medsynth.models.summary import count_params
from medsynth.pictures import save_curves, save_grid
from medsynth.progress import Progress
from medsynth.storage import atomic_write_json, atomic_write_text, read_json
from medsynth.train.augment import parse_policy
from medsynth.train.checkpoints import CONFIG_FILE, RunCheckpoints
from medsynth.train.config import TrainConfig
from medsynth.train.ema import GeneratorAverage
from medsynth.train.step import AdversarialStep, sample_latents
from medsynth.train.strategy import Distribution, make_distribution, stable_sync_batch_norm
from medsynth.train.telemetry import Telemetry, read_history

log = logging.getLogger("medsynth")

PREEMPTED_EXIT = 143  # 128 + SIGTERM, what Kubernetes expects from a container stopped by SIGTERM
WORKDIR_ENV = "MEDSYNTH_WORKDIR"  # where runs with a gs:// --out train locally (default: the temp dir)
_OUTPUTS_KEPT_LOCAL = ("checkpoints",)


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


# --------------------------------------------------------------------------------------- precision, XLA


def _gpu_capability() -> tuple[int, int] | None:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return tuple(details.get("compute_capability") or (0, 0))  # type: ignore[return-value]


def resolve_precision(choice: str, capability: tuple[int, int] | None) -> str:
    """The Keras policy: bfloat16 where tensor cores do it (Ampere, sm_80+), float16 on Volta/Turing."""
    if choice == "off":
        return "float32"
    if choice in ("float16", "bfloat16"):
        if capability is None:
            log.warning("--mixed-precision %s on a CPU: correct, but slower than float32", choice)
        return f"mixed_{choice}"
    if capability is None or capability < (7, 0):
        return "float32"
    return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"


def resolve_determinism(choice: str, capability: tuple[int, int] | None) -> bool:
    """Op determinism: bitwise-exact resume on CPUs; off on GPUs, where it would keep XLA off.

    XLA has no deterministic MaxPool gradient (ResNet, Inception, Xception), and cuDNN's
    deterministic kernels are the slower ones: a GPU run trades bitwise resume (it still resumes
    at the saved step, with the saved data and RNG state) for speed, unless `--deterministic on`.
    """
    if choice == "auto":
        return capability is None
    return choice == "on"


def resolve_xla(
    choice: str, capability: tuple[int, int] | None, dist: Distribution, deterministic: bool = False
) -> bool:
    if dist.hvd is not None:
        if choice == "on":
            raise ConfigError(
                "--xla on with --strategy horovod: Horovod's all-reduce ops run outside XLA; "
                "use --xla off, or --strategy mirrored/multiworker for XLA"
            )
        return False
    if choice == "auto":
        # On for GPUs, where fusing the many small normalisation and activation ops is what XLA
        # is for; off on CPUs, where TF's own kernels are oneDNN's and XLA's are not (bench/).
        # The whole step compiles (CPU-checked in tests) since G's up-sampling is a broadcast
        # (medsynth.models.layers.NearestUpSampling2D), not ResizeNearestNeighbor.
        # With op determinism XLA refuses MaxPool's gradient (ResNet, Xception, Inception): off.
        return capability is not None and not deterministic
    return choice == "on"


def _float32_outputs(model: tf.keras.Model) -> None:
    """Keras' mixed-precision rule: the layer that makes the model's output computes in float32."""
    for out in model.outputs:
        layer = out._keras_history.layer
        if layer.dtype_policy.compute_dtype != "float32":
            layer._set_dtype_policy(tf.keras.mixed_precision.Policy("float32"))


def build_models(cfg: TrainConfig, policy: str = "float32") -> tuple[tf.keras.Model, tf.keras.Model]:
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        generator = build_generator(cfg.image_size, **cfg.generator_options())
        discriminator = build_discriminator(
            cfg.image_size, backbone=cfg.backbone, weights=cfg.backbone_weights, mode=cfg.backbone_mode,
            head=cfg.d_head, seed=cfg.seed,
        )
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    if policy != "float32":
        _float32_outputs(generator)
        _float32_outputs(discriminator)
    return generator, discriminator


def _optimizer(lr: float, beta_1: float, policy: str) -> tf.keras.optimizers.Optimizer:
    opt = tf.keras.optimizers.Adam(lr, beta_1=beta_1)
    if policy == "mixed_float16":  # float16 gradients underflow without loss scaling; bfloat16 need none
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def _optimizer_variables(opt: tf.keras.optimizers.Optimizer) -> list[tf.Variable]:
    v = opt.variables
    return list(v() if callable(v) else v)


# ----------------------------------------------------------------------------------------------- data


class Feed:
    """This process's per-replica batches, cut from one global batch stream that every worker reads.

    Reading the whole global batch on each worker and keeping its slices costs decoding (cheap next
    to a GAN step) and buys two things: the numbers do not depend on how many devices share the
    batch, and the input position is the same on every worker, so the chief's checkpoint of
    `iterator` (a plain tf.data iterator: distributed iterators are not checkpointable in TF 2.15)
    resumes them all.
    """

    def __init__(self, dist: Distribution, data_dir: Path, cfg: TrainConfig) -> None:
        from medsynth.data.input import make_dataset

        dist.check_batch(cfg.batch_size)
        self.dist = dist
        self.per = cfg.batch_size // dist.replicas
        dataset = make_dataset(
            data_dir, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment
        )
        self.iterator = iter(dataset)

    def __next__(self) -> Any:
        x = next(self.iterator)
        per, dist = self.per, self.dist
        if dist.hvd is not None:
            return x[dist.worker * per : (dist.worker + 1) * per]
        if dist.replicas == 1:
            return x

        def mine(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
            i = ctx.replica_id_in_sync_group
            return x[i * per : (i + 1) * per]

        return dist.strategy.experimental_distribute_values_from_function(mine)

    def __iter__(self) -> Feed:
        return self


# ----------------------------------------------------------------------------------------- where to write


def _local_workdir(out: str, dist: Distribution) -> Path:
    root = Path(os.environ.get(WORKDIR_ENV) or tempfile.gettempdir()) / "medsynth-work"
    key = hashlib.sha256(out.encode()).hexdigest()[:16]
    return root / key / (f"worker-{dist.worker}" if dist.workers > 1 else "chief") / "run"


class _Outputs:
    """Mirror of the run's non-checkpoint files (config, history, samples, TensorBoard) in object storage."""

    def __init__(self, local: Path, remote: str | None) -> None:
        self.local, self.remote = local, remote
        self._sent: dict[str, tuple[int, int]] = {}

    def pull(self, *names: str) -> None:
        if not self.remote:
            return
        for name in names:
            uri = f"{self.remote}/{name}"
            if storage.exists(uri):
                atomic_write_text(self.local / name, storage.read_text(uri))

    def push(self) -> None:
        if not self.remote:
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            parts = rel.split("/")
            if parts[0] in _OUTPUTS_KEPT_LOCAL or any(p.startswith(".") for p in parts):  # temp files
                continue
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._sent.get(rel) != stamp:
                storage.write_bytes(f"{self.remote}/{rel}", path.read_bytes())
                self._sent[rel] = stamp


# ----------------------------------------------------------------------------------------------- train


def train(cfg: TrainConfig) -> TrainResult:
    from medsynth.data.input import load_manifest, resolve_dataset

    capability = _gpu_capability()
    deterministic = resolve_determinism(cfg.deterministic, capability)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    # Strategies set up devices and collectives: before any other TensorFlow op runs.
    dist = make_distribution(cfg.strategy, cfg.gpus)
    dist.check_batch(cfg.batch_size)
    chief = dist.is_chief
    tf.keras.utils.set_random_seed(cfg.seed)

    out = str(cfg.out).rstrip("/")
    remote = out if storage.is_gcs(out) else None
    if remote:
        run_dir = _local_workdir(out, dist)
        storage.list_uris(f"{remote}/checkpoints")  # an unreachable or missing bucket fails here, clearly
        data_cache = run_dir.parent.parent / "_data"
    else:
        run_dir = Path(out)
        data_cache = run_dir.parent / "_data"
    run_dir.mkdir(parents=True, exist_ok=True)
    outputs = _Outputs(run_dir, remote)

    data_dir = resolve_dataset(cfg.data, cfg.image_size, cache_root=data_cache, seed=cfg.seed)
    manifest = load_manifest(data_dir)
    if manifest["image_size"] != cfg.image_size:
        raise ConfigError(
            f"--data {cfg.data} holds {manifest['image_size']} px frames, not --image-size {cfg.image_size}"
        )

    policy = resolve_precision(cfg.mixed_precision, capability)
    xla = resolve_xla(cfg.xla, capability, dist, deterministic)
    with dist.strategy.scope():
        generator, discriminator = build_models(cfg, policy)
        several = dist.replicas > 1 or dist.hvd is not None
        synchronized = cfg.batch_norm == "synchronized" or (cfg.batch_norm == "auto" and several)
        if cfg.batch_norm == "fused" and several:
            log.warning("--batch-norm fused with %d replicas: each normalises its own slice", dist.replicas)
        for model in (generator, discriminator):
            if synchronized:
                stable_sync_batch_norm(model, dist.hvd)
            else:
                fuse_batch_norm(model)  # one replica: nothing to synchronise, and fused BN is faster
        g_opt = _optimizer(cfg.lr_g, cfg.beta_1, policy)
        d_opt = _optimizer(cfg.lr_d, cfg.beta_1, policy)
        # Built now, not at the first step: a restore then fills the slots at once, and Horovod can
        # broadcast them before any rank takes a step.
        getattr(g_opt, "inner_optimizer", g_opt).build(generator.trainable_variables)
        getattr(d_opt, "inner_optimizer", d_opt).build(discriminator.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        average = _average(cfg, generator)
    feed = Feed(dist, data_dir, cfg)

    signature = {**cfg.model_signature(), "loss_scale": policy == "mixed_float16"}
    checkpoints = RunCheckpoints(
        run_dir,
        signature,
        cfg.keep_checkpoints,
        remote=f"{remote}/checkpoints" if remote else None,
        write=chief,
        # MultiWorkerMirrored: saving reads sync-on-read variables, a collective every worker joins.
        collective=dist.name == "multiworker",
        step=step_var,
        generator=generator,
        discriminator=discriminator,
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        iterator=feed.iterator,
        **({"generator_ema": average.average} if average else {}),
    )
    restored = checkpoints.restore_latest(cfg.init_from, cfg.steps)
    adopted = checkpoints.adopted
    adversarial = AdversarialStep(
        generator,
        discriminator,
        g_opt,
        d_opt,
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
    )
    start = int(step_var.numpy())
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
        dist.hvd.broadcast_variables(
            generator.variables + discriminator.variables + _optimizer_variables(g_opt)
            + _optimizer_variables(d_opt) + [step_var] + (average.average.variables if average else []),
            root_rank=0,
        )
    settings = {
        "strategy": dist.name,
        "replicas": dist.replicas,
        "workers": dist.workers,
        "precision": policy,
        "xla": xla,
    }
    if restored:
        log.info("%s from %s (step %d)", "continuing" if adopted else "resuming", restored, start)
    log.info("training with %s", ", ".join(f"{k}={v}" for k, v in settings.items()))
    if chief:
        outputs.pull("history.jsonl", "metrics.json")
        history = f"{adopted}/history.jsonl"
        if adopted and storage.exists(history):  # the loss curves start where the continued run started
            atomic_write_text(run_dir / "history.jsonl", storage.read_text(history))
        info = {
            **cfg.to_dict(),
            "run_id": Path(out).parent.name,
            "dataset": str(data_dir),
            "dataset_hash": manifest.get("hash"),
            "settings": settings,
        }
        atomic_write_json(run_dir / CONFIG_FILE, info)
        _truncate_history(run_dir, start)
        outputs.push()

    telemetry = Telemetry(
        run_dir,
        {"backbone": cfg.backbone},
        port=cfg.metrics_port if chief else None,
        enabled=chief,
        pushgateway=cfg.pushgateway,
        grouping={"run": Path(out).name or "run"},
    )
    fixed_z = sample_latents(cfg.seed, 16, cfg.latent_dim)
    sampled = average.average if average else generator
    wall = time.monotonic()
    values: dict[str, float] = {}
    trained = 0
    bar_stream = sys.stderr if chief else open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        with (
            _Preemption() as preemption,
            Progress(
                cfg.steps, f"train {cfg.backbone}", unit="step", initial=start, stream=bar_stream
            ) as bar,
        ):
            step = start
            while step < cfg.steps:
                t0 = time.perf_counter()
                real = next(feed)
                t1 = time.perf_counter()
                try:
                    out_values = adversarial.train_step(real, tf.constant(step, tf.int64))
                except tf.errors.UnimplementedError as e:
                    if xla and "deterministic XLA" in str(e):
                        raise ConfigError(
                            "--xla on: XLA has no deterministic gradient for an op of this backbone "
                            f"({cfg.backbone}: MaxPool) and training runs with op determinism; use --xla off"
                        ) from e
                    raise
                except tf.errors.InvalidArgumentError as e:
                    if xla and "unsupported operations" in str(e):
                        ops = re.findall(r"_JIT: (\w+)", str(e)) or ["an op without an XLA kernel"]
                        raise ConfigError(
                            f"--xla on: XLA cannot compile this model's step ({ops[0]}); use --xla off"
                        ) from e
                    raise
                step += 1
                step_var.assign(step)
                if average:
                    with dist.strategy.scope():
                        average.update(step)
                trained += 1
                stop = preemption.requested
                if dist.workers > 1:  # one worker's SIGTERM stops all of them at the same step
                    stop = float(adversarial.agree(tf.constant(1.0 if stop else 0.0))) > 0
                t2 = time.perf_counter()
                telemetry.step(t2 - t0, t1 - t0, cfg.batch_size)
                if step % cfg.log_every == 0 or step == cfg.steps:
                    values = {k: float(v) for k, v in out_values.items()}
                    telemetry.scalars(step, values, bar.rate() * cfg.batch_size)
                bar.update(1, postfix=_postfix(values, bar.rate() * cfg.batch_size))
                if step % cfg.sample_every == 0 or step == cfg.steps:
                    # Every worker runs G: under MultiWorkerMirrored, reading BN's moving statistics
                    # (sync-on-read variables) is a collective that all workers must join.
                    _write_samples(run_dir, sampled, fixed_z, step, telemetry, chief)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps or stop:
                    checkpoints.save(step)
                    if chief:
                        outputs.push()
                if stop:
                    log.warning("SIGTERM: checkpoint written at step %d, exiting", step)
                    raise SystemExit(PREEMPTED_EXIT)
    finally:
        telemetry.close()
        if bar_stream is not sys.stderr:
            bar_stream.close()

    seconds = time.monotonic() - wall
    g_count, d_count = count_params(generator), count_params(discriminator)
    metrics = {
        "steps": cfg.steps,
        "g_params": g_count.total,
        "d_params": d_count.total,
        "d_trainable_params": d_count.trainable,
        "steps_this_run": trained,
        "images_per_s": (trained * cfg.batch_size / seconds) if trained else None,
        "wall_seconds": seconds,
        **{f"final_{k}": v for k, v in values.items()},
    }
    if chief:
        if start >= cfg.steps and not adopted:
            log.info("run already finished at step %d; nothing to do", start)
            old = run_dir / "metrics.json"
            if old.exists():
                metrics = read_json(old)
        else:
            if checkpoints.manager.latest_checkpoint is None:
                checkpoints.save(cfg.steps)
            _write_curves(run_dir)
            atomic_write_json(run_dir / "metrics.json", metrics)
        outputs.push()
    return TrainResult(
        run_dir, max(start, cfg.steps), metrics, uri=out, settings=settings,
        generator=generator, discriminator=discriminator, sampled=sampled,
    )


def _average(cfg: TrainConfig, generator: tf.keras.Model) -> GeneratorAverage | None:
    """G's moving average (built like G, in float32, with fused BN: it is only ever sampled)."""
    if not cfg.g_ema_kimg:
        return None
    from medsynth.models.generator import build_generator

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("float32")
    try:
        average = build_generator(cfg.image_size, **cfg.generator_options())
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    fuse_batch_norm(average)
    return GeneratorAverage(generator, average, cfg.batch_size, cfg.g_ema_kimg)


def _postfix(values: dict[str, float], images_per_s: float) -> str:
    if not values:
        return f"{images_per_s:.1f} img/s"
    return f"D {values['d_loss']:.3f} G {values['g_loss']:.3f} {images_per_s:.1f} img/s"


def _write_samples(
    run_dir: Path, generator: tf.keras.Model, z: tf.Tensor, step: int, telemetry: Telemetry, chief: bool
) -> None:
    images = tf.cast(generator(z, training=False), tf.float32).numpy()
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
