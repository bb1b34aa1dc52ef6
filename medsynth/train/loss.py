"""The paper's losses: BCE for D (real → 1, generated → 0), non-saturating BCE for G.

Per-example losses are averaged over the *global* batch with
`tf.nn.compute_average_loss`, so that summing replica gradients (what every
`tf.distribute` strategy and Horovod do) gives the single-device gradient.
"""

from __future__ import annotations

import tensorflow as tf


def _bce(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    logits = tf.cast(tf.reshape(logits, [-1]), tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)


def discriminator_loss(
    real_logits: tf.Tensor, fake_logits: tf.Tensor, global_batch_size: int, label_smoothing: float = 0.0
) -> tf.Tensor:
    """-log D(x) - log(1 - D(G(z))); one-sided label smoothing keeps D from over-confidence on real frames."""
    real = _bce(tf.fill(tf.shape(tf.reshape(real_logits, [-1])), 1.0 - label_smoothing), real_logits)
    fake = _bce(tf.zeros_like(tf.reshape(fake_logits, [-1]), tf.float32), fake_logits)
    return tf.nn.compute_average_loss(real + fake, global_batch_size=global_batch_size)


def generator_loss(fake_logits: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """-log D(G(z)): generated frames labelled real (the non-saturating loss of Goodfellow et al.)."""
    per_example = _bce(tf.ones_like(tf.reshape(fake_logits, [-1]), tf.float32), fake_logits)
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
