"""An exponential moving average of G's weights: the generator that is sampled, judged and exported.

A GAN's generator at any one step carries that step's noise: the last few updates decide whether a
short run's final frames look collapsed (measured here: the same configuration on the same data
raised the collapse alarm or not depending on the seed). StyleGAN2-ADA and Projected GAN therefore
judge and ship G_ema, an average of G over its last few thousand images, and keep training G. The
schedule is theirs (training_loop.py): a half-life of `kimg` thousand images, ramped up early as
`rampup` × the images seen so far, so the average never reaches back to the random start.

Every trainable weight is averaged. Batch norm's moving statistics are averaged too by default (they
are themselves running averages of G's activations, which move with the weights), or copied from G
(`copy_buffers`), as StyleGAN2-ADA and Projected GAN copy every buffer (training_loop.py): Keras' BN
statistics already lag G by about 1 / (1 − momentum) = 100 steps, and averaging them again adds a
second lag of the average's half-life. The average lives outside any distribution
strategy: every replica's G holds the same weights, and every worker keeps its own identical copy.
"""

from __future__ import annotations

import tensorflow as tf

RAMPUP = 0.05  # StyleGAN2-ADA's ema_rampup: the half-life is at most 5 % of the images seen


def default_kimg(batch_size: int) -> float:
    """StyleGAN2-ADA's `auto` configuration, kept by Projected GAN: 10 kimg at a batch of 32."""
    return batch_size * 10 / 32


def ema_beta(step: int | tf.Tensor, batch_size: int, kimg: float, rampup: float = RAMPUP) -> tf.Tensor:
    """The weight of the old average after `step` updates (step counts from 1)."""
    seen = tf.cast(step, tf.float64) * batch_size
    cap = tf.constant(kimg * 1000.0, tf.float64)
    half_life = tf.minimum(cap, seen * rampup) if rampup else cap
    half_life = tf.maximum(half_life, 1e-8)
    return tf.cast(tf.pow(tf.constant(0.5, tf.float64), batch_size / half_life), tf.float32)


class GeneratorAverage:
    """`average` follows `generator`: after each of G's updates, w_avg ← β·w_avg + (1 − β)·w."""

    def __init__(
        self, generator: tf.keras.Model, average: tf.keras.Model, batch_size: int, kimg: float,
        copy_buffers: bool = False,
    ) -> None:
        if len(generator.weights) != len(average.weights):
            raise ValueError("the average must be built like the generator")
        self.generator, self.average = generator, average
        self.batch_size, self.kimg = batch_size, kimg
        # weights that are copied rather than averaged: G's non-trainable state (BN's moving statistics)
        self.copied = [not w.trainable for w in generator.weights] if copy_buffers else [False] * len(
            generator.weights)
        for a, w in zip(average.weights, generator.weights, strict=True):
            a.assign(tf.convert_to_tensor(w))
        self._update = tf.function(self._lerp, reduce_retracing=True)

    def _lerp(self, step: tf.Tensor) -> None:
        beta = ema_beta(step, self.batch_size, self.kimg)  # in the compiled update, not op by op
        for a, w, copied in zip(self.average.weights, self.generator.weights, self.copied, strict=True):
            w = tf.cast(tf.convert_to_tensor(w), a.dtype)
            a.assign(w if copied else w + tf.cast(beta, a.dtype) * (a - w))

    def update(self, step: int) -> None:
        """Fold in G after its `step`-th update."""
        self._update(tf.constant(step, tf.int64))
