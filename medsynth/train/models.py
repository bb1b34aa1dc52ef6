"""What a run trains: G and D in the run's precision, their optimizers, the step, G's moving average.

All of it is built under the distribution strategy's scope, before the first step, so that a
restore fills every variable at once and Horovod can broadcast rank 0's state before anyone trains.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from medsynth.models.layers import fuse_batch_norm
from medsynth.train.config import TrainConfig
from medsynth.train.ema import GeneratorAverage
from medsynth.train.fastpath import FastPath
from medsynth.train.strategy import Distribution, stable_sync_batch_norm

log = logging.getLogger("medsynth")


def _float32_outputs(model: tf.keras.Model) -> None:
    """Keras' mixed-precision rule: the layer that makes the model's output computes in float32."""
    for out in model.outputs:
        layer = out._keras_history.layer
        if layer.dtype_policy.compute_dtype != "float32":
            layer._set_dtype_policy(tf.keras.mixed_precision.Policy("float32"))


def generator_for(cfg: TrainConfig) -> tf.keras.Model:
    """G as `cfg` describes it (`--generator`: Table 1's or FastGAN's), in the global Keras policy."""
    if cfg.generator == "fastgan":
        from medsynth.models.fastgan import build_fastgan

        return build_fastgan(cfg.image_size, **cfg.generator_options())
    from medsynth.models.generator import build_generator

    return build_generator(cfg.image_size, **cfg.generator_options())


def build_models(cfg: TrainConfig, policy: str = "float32") -> tuple[tf.keras.Model, tf.keras.Model]:
    """G and D as `cfg` describes them, computing in the Keras `policy`."""
    from medsynth.models.discriminator import build_discriminator

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        generator = generator_for(cfg)
        discriminator = build_discriminator(
            cfg.image_size, backbone=cfg.backbone, weights=cfg.backbone_weights, mode=cfg.backbone_mode,
            head=cfg.d_head, seed=cfg.seed, condition_channels=cfg.condition_channels,
            feature_size=cfg.d_feature_size, scale_mixing=cfg.d_scale_mixing, max_channels=cfg.d_max_channels,
            blocks=cfg.d_blocks,
        )
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    if policy != "float32":
        _float32_outputs(generator)
        _float32_outputs(discriminator)
    return generator, discriminator


def _optimizer(lr: float, beta_1: float, policy: str, beta_2: float = 0.999,
               epsilon: float = 1e-7) -> tf.keras.optimizers.Optimizer:
    opt = tf.keras.optimizers.Adam(lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    if policy == "mixed_float16":  # float16 gradients underflow without loss scaling; bfloat16 need none
        opt = tf.keras.mixed_precision.LossScaleOptimizer(opt)
    return opt


def _optimizer_variables(opt: tf.keras.optimizers.Optimizer) -> list[tf.Variable]:
    v = opt.variables
    return list(v() if callable(v) else v)


def _average(cfg: TrainConfig, generator: tf.keras.Model) -> GeneratorAverage | None:
    """G's moving average (built like G, in float32, with fused BN: it is only ever sampled)."""
    if not cfg.g_ema_kimg:
        return None
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("float32")
    try:
        average = generator_for(cfg)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    fuse_batch_norm(average)
    return GeneratorAverage(generator, average, cfg.batch_size, cfg.g_ema_kimg,
                            copy_buffers=cfg.g_ema_buffers == "copy")


@dataclass
class TrainState:
    """Everything a checkpoint holds besides the input position."""

    generator: tf.keras.Model
    discriminator: tf.keras.Model
    g_opt: tf.keras.optimizers.Optimizer
    d_opt: tf.keras.optimizers.Optimizer
    step: tf.Variable  # int64, the number of steps taken
    average: GeneratorAverage | None  # G's moving average, when --g-ema-kimg is not 0

    @property
    def sampled(self) -> tf.keras.Model:
        """The generator that is sampled, judged and exported: G's average, or G when off."""
        return self.average.average if self.average else self.generator

    def checkpointed(self, iterator: Any) -> dict[str, Any]:
        """The objects of a run's checkpoint, by the names its files use."""
        return {
            "step": self.step,
            "generator": self.generator,
            "discriminator": self.discriminator,
            "g_optimizer": self.g_opt,
            "d_optimizer": self.d_opt,
            "iterator": iterator,
            **({"generator_ema": self.average.average} if self.average else {}),
        }

    def variables(self) -> list[tf.Variable]:
        """Every variable, in the order Horovod broadcasts them from rank 0."""
        return (
            self.generator.variables + self.discriminator.variables + _optimizer_variables(self.g_opt)
            + _optimizer_variables(self.d_opt) + [self.step]
            + (self.average.average.variables if self.average else [])
        )


def build_train_state(
    cfg: TrainConfig, dist: Distribution, policy: str, fast: FastPath | None = None
) -> TrainState:
    """G, D, optimizers and G's average under `dist`'s scope, with the batch norm its replicas need and
    the layers of the machine's fast path (medsynth.train.fastpath)."""
    with dist.strategy.scope():
        generator, discriminator = build_models(cfg, fast.build_policy(policy) if fast else policy)
        several = dist.replicas > 1 or dist.hvd is not None
        synchronized = cfg.batch_norm == "synchronized" or (cfg.batch_norm == "auto" and several)
        if cfg.batch_norm == "fused" and several:
            log.warning("--batch-norm fused with %d replicas: each normalises its own slice", dist.replicas)
        for model in (generator, discriminator):
            if synchronized:
                stable_sync_batch_norm(model, dist.hvd)
            else:
                fuse_batch_norm(model)  # one replica: nothing to synchronise, and fused BN is faster
        if fast is not None:
            fast.apply(generator, discriminator)
        g_opt = _optimizer(cfg.lr_g, cfg.beta_1, policy, cfg.beta_2, cfg.adam_epsilon)
        d_opt = _optimizer(cfg.lr_d, cfg.beta_1, policy, cfg.beta_2, cfg.adam_epsilon)
        # Built now, not at the first step: a restore then fills the slots at once, and Horovod can
        # broadcast them before any rank takes a step.
        getattr(g_opt, "inner_optimizer", g_opt).build(generator.trainable_variables)
        getattr(d_opt, "inner_optimizer", d_opt).build(discriminator.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        average = _average(cfg, generator)
    return TrainState(generator, discriminator, g_opt, d_opt, step, average)
