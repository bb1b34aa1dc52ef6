"""The adversarial update: D's step then G's step, in one compiled function.

Written once for every strategy: each replica draws its slice of the *global*
latent batch from a stateless seed (so one device and N replicas see the same
numbers, and a resumed run draws what the uninterrupted one would have), and D
always sees real and generated frames in one batch, so that its batch
normalisation (the paper's head, and a trainable backbone) cannot tell them
apart by batch statistics alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from medsynth.train.loss import discriminator_loss, generator_loss

SAMPLE_STREAM = 2**31 - 1  # seed stream of the fixed latent batch used for sample grids


def latent_batch(seed: int, step: tf.Tensor, stream: int, n: int, latent_dim: int) -> tf.Tensor:
    """The global latent batch of (seed, step, stream): same numbers on any number of replicas."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64) * 2 + stream])
    return tf.random.stateless_normal([n, latent_dim], seed=key)


def sample_latents(seed: int, n: int, latent_dim: int) -> tf.Tensor:
    return latent_batch(seed, tf.constant(SAMPLE_STREAM, tf.int64), 0, n, latent_dim)


def split_frozen_discriminator(discriminator: tf.keras.Model) -> tuple[tf.keras.Model, tf.keras.Model] | None:
    """(features, head) sharing D's layers when D's backbone is frozen, else None.

    `features` maps frames to the pooled backbone features (layer "features" of
    medsynth.models.discriminator), `head` maps those to logits; together they are D.
    """
    from medsynth.models.discriminator import backbone_of

    try:
        backbone = backbone_of(discriminator)
        pooled = discriminator.get_layer("features")
        norm, logit = discriminator.get_layer("head_norm"), discriminator.get_layer("logit")
    except ValueError:
        return None
    if backbone.trainable:
        return None
    features = tf.keras.Model(discriminator.inputs, pooled.output, name="d_features")
    x = tf.keras.Input(shape=pooled.output.shape[1:], dtype=pooled.output.dtype)
    head = tf.keras.Model(x, logit(norm(x)), name="d_head")
    if {id(v) for v in head.trainable_variables} != {id(v) for v in discriminator.trainable_variables}:
        return None  # something besides the head learns: D must run whole
    return features, head


@dataclass
class AdversarialStep:
    generator: tf.keras.Model
    discriminator: tf.keras.Model
    g_optimizer: tf.keras.optimizers.Optimizer
    d_optimizer: tf.keras.optimizers.Optimizer
    global_batch_size: int
    latent_dim: int
    seed: int
    label_smoothing: float = 0.0
    strategy: tf.distribute.Strategy | None = None
    hvd: Any = None  # horovod.tensorflow when each process is one Horovod rank
    jit_compile: bool = False  # XLA-compile the per-replica update

    def __post_init__(self) -> None:
        self.strategy = self.strategy or tf.distribute.get_strategy()
        self._split = split_frozen_discriminator(self.discriminator)
        both = self._both
        if self.jit_compile:
            # Keras' pattern: the per-replica step is compiled, the strategy runs it on every replica.
            both = tf.function(self._both, jit_compile=True, reduce_retracing=True)
        self._replica_step = both
        self.train_step = tf.function(self._train_step, reduce_retracing=True)
        self.d_step = tf.function(self._distributed(self._d_update), reduce_retracing=True)
        self.g_step = tf.function(self._distributed(self._g_update), reduce_retracing=True)
        self.agree = tf.function(self._agree, reduce_retracing=True)

    # --- per replica -----------------------------------------------------------------------------
    def _replica_id(self) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        rid = ctx.replica_id_in_sync_group
        if self.hvd is not None:
            rid = rid + self.hvd.rank()
        return rid

    def _my_latents(self, step: tf.Tensor, stream: int, local: tf.Tensor) -> tf.Tensor:
        z = latent_batch(self.seed, step, stream, self.global_batch_size, self.latent_dim)
        start = self._replica_id() * local
        return z[start : start + local]

    def _tape(self, tape: tf.GradientTape) -> tf.GradientTape:
        """Under Horovod the tape sums gradients over ranks (losses are already / global batch)."""
        if self.hvd is None:
            return tape
        return self.hvd.DistributedGradientTape(tape, op=self.hvd.Sum)

    def _discriminate(self, real: tf.Tensor, fake: tf.Tensor, real_features: tf.Tensor | None = None):  # noqa: ANN202
        """D's logits of [real; fake] in one batch, and the real frames' backbone features when frozen.

        A frozen backbone is a fixed function (inference-mode BN, no gradient), so the real frames'
        features from the D update are the ones the G update needs: computed once per step.
        """
        fake = tf.cast(fake, real.dtype)
        if self._split is None:
            return self.discriminator(tf.concat([real, fake], 0), training=True), None
        features, head = self._split
        if real_features is None:
            both = features(tf.concat([real, fake], 0), training=True)
            real_features = tf.stop_gradient(both[: tf.shape(real)[0]])
            fake_features = both[tf.shape(real)[0] :]
        else:
            fake_features = features(fake, training=True)
        return head(tf.concat([real_features, fake_features], 0), training=True), real_features

    def _d_update(self, real: tf.Tensor, step: tf.Tensor) -> dict[str, tf.Tensor]:
        out, _ = self._d_update_with_features(real, step)
        return out

    def _d_update_with_features(self, real: tf.Tensor, step: tf.Tensor):  # noqa: ANN202
        local = tf.shape(real)[0]
        z = self._my_latents(step, 0, local)
        fake = tf.stop_gradient(self.generator(z, training=True))
        with tf.GradientTape() as tape:
            logits, real_features = self._discriminate(real, fake)
            real_logits, fake_logits = logits[:local], logits[local:]
            loss = discriminator_loss(real_logits, fake_logits, self.global_batch_size, self.label_smoothing)
            scaled = self._scale(self.d_optimizer, loss)
        grads = self._tape(tape).gradient(scaled, self.discriminator.trainable_variables)
        grads = self._unscale(self.d_optimizer, grads)
        self.d_optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables, strict=True))
        n = float(self.global_batch_size)
        out = {
            "d_loss": loss,
            "d_real": tf.reduce_sum(tf.sigmoid(tf.cast(real_logits, tf.float32))) / n,
            "d_fake": tf.reduce_sum(tf.sigmoid(tf.cast(fake_logits, tf.float32))) / n,
        }
        return out, real_features

    def _g_update(
        self, real: tf.Tensor, step: tf.Tensor, real_features: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        local = tf.shape(real)[0]
        z = self._my_latents(step, 1, local)
        with tf.GradientTape() as tape:
            fake = self.generator(z, training=True)
            logits, _ = self._discriminate(real, fake, real_features)
            loss = generator_loss(logits[local:], self.global_batch_size)
            scaled = self._scale(self.g_optimizer, loss)
        grads = self._tape(tape).gradient(scaled, self.generator.trainable_variables)
        grads = self._unscale(self.g_optimizer, grads)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables, strict=True))
        return {"g_loss": loss}

    def _both(self, real: tf.Tensor, step: tf.Tensor) -> dict[str, tf.Tensor]:
        out, real_features = self._d_update_with_features(real, step)
        out.update(self._g_update(real, step, real_features))
        return out

    @staticmethod
    def _scale(opt: tf.keras.optimizers.Optimizer, loss: tf.Tensor) -> tf.Tensor:
        return opt.get_scaled_loss(loss) if hasattr(opt, "get_scaled_loss") else loss

    @staticmethod
    def _unscale(opt: tf.keras.optimizers.Optimizer, grads: list) -> list:
        return opt.get_unscaled_gradients(grads) if hasattr(opt, "get_unscaled_gradients") else grads

    # --- across replicas -------------------------------------------------------------------------
    def _distributed(self, fn):  # noqa: ANN001, ANN202 - a tf.function body
        def run(real, step):  # noqa: ANN001, ANN202
            per_replica = self.strategy.run(fn, args=(real, step))
            out = {
                k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                for k, v in per_replica.items()
            }
            if self.hvd is not None:  # each rank holds its share of the global sums
                keys = sorted(out)
                summed = self.hvd.allreduce(tf.stack([out[k] for k in keys]), op=self.hvd.Sum)
                out = {k: summed[i] for i, k in enumerate(keys)}
            return out

        return run

    def _train_step(self, real: tf.Tensor, step: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._distributed(self._replica_step)(real, step)

    def _agree(self, flag: tf.Tensor) -> tf.Tensor:
        """The largest `flag` of all workers (a SIGTERM seen by any; the newest step any resumed from)."""
        flag = tf.reshape(tf.cast(flag, tf.float32), [1])
        per_replica = self.strategy.run(lambda: tf.identity(flag))
        total = tf.reduce_max(self.strategy.gather(per_replica, axis=0))  # ReduceOp has no MAX
        if self.hvd is not None:
            total = self.hvd.allreduce(total, op=self.hvd.Max)
        return total
