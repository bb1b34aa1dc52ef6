"""The adversarial losses: the paper's BCE (real → 1, generated → 0; non-saturating for G), and the
hinge loss of Projected GAN and SAGAN (`--loss hinge`).

Logits are [n] or [n, patches] (a patch discriminator): each frame's loss is the mean over its
patches. Per-frame losses are averaged over the *global* batch with `tf.nn.compute_average_loss`,
so that summing replica gradients (what every `tf.distribute` strategy and Horovod do) gives the
single-device gradient.
"""

from __future__ import annotations

import tensorflow as tf

from medsynth.errors import ConfigError

LOSSES = ("bce", "hinge")


def _per_frame(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(tf.reshape(values, [tf.shape(values)[0], -1]), axis=1)


def _bce(label: float, logits: tf.Tensor) -> tf.Tensor:
    logits = tf.cast(logits, tf.float32)
    labels = tf.fill(tf.shape(logits), tf.constant(label, tf.float32))
    return _per_frame(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ConfigError(f"unknown --loss {loss!r}; use one of: {', '.join(LOSSES)}")
    return loss


def discriminator_loss(
    real_logits: tf.Tensor, fake_logits: tf.Tensor, global_batch_size: int, label_smoothing: float = 0.0,
    loss: str = "bce",
) -> tf.Tensor:
    """BCE: -log D(x) - log(1 - D(G(z))), one-sided label smoothing keeping D from over-confidence on
    real frames; hinge: max(0, 1 - D(x)) + max(0, 1 + D(G(z)))."""
    if check_loss(loss) == "hinge":
        real = _per_frame(tf.nn.relu(1.0 - tf.cast(real_logits, tf.float32)))
    else:
        real = _bce(1.0 - label_smoothing, real_logits)
    return tf.nn.compute_average_loss(real + _as_fake(fake_logits, loss), global_batch_size=global_batch_size)


def _as_fake(logits: tf.Tensor, loss: str) -> tf.Tensor:
    """Each frame's loss for D when it should call the frame generated."""
    if loss == "hinge":
        return _per_frame(tf.nn.relu(1.0 + tf.cast(logits, tf.float32)))
    return _bce(0.0, logits)


def generator_loss(fake_logits: tf.Tensor, global_batch_size: int, loss: str = "bce") -> tf.Tensor:
    """BCE: -log D(G(z)), generated frames labelled real (Goodfellow et al.'s non-saturating loss);
    hinge: -D(G(z))."""
    if check_loss(loss) == "hinge":
        per_frame = _per_frame(-tf.cast(fake_logits, tf.float32))
    else:
        per_frame = _bce(1.0, fake_logits)
    return tf.nn.compute_average_loss(per_frame, global_batch_size=global_batch_size)


def mismatch_loss(logits: tf.Tensor, global_batch_size: int, loss: str = "bce") -> tf.Tensor:
    """D's matching-aware term (Reed et al. 2016): real frames shown with another frame's key points
    are judged as generated ones are, so D learns whether the key points fit the frame."""
    return tf.nn.compute_average_loss(_as_fake(logits, check_loss(loss)), global_batch_size=global_batch_size)
