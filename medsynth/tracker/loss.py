"""Heat-map targets and the tracker's loss.

Targets are `keypoints.heatmaps` (a Gaussian per point, σ = 1.5 px at 64 px). The loss is
CenterNet's penalty-reduced pixel-wise focal loss (Zhou et al. 2019, eq. 1, α = 2, β = 4), summed
over pixels and normalised by the number of key points in the batch. Its positives are the pixels
nearest each point; the Gaussian only softens the penalty on their neighbours. The points are
sub-pixel, so the Gaussian's peak is below 1 unless a point sits on a pixel centre: positives come
from the rounded points, not from "target == 1".

"bce", a binary cross-entropy regressing the Gaussian itself (same normalisation), is kept for
comparison: the focal loss found tips and bifurcations better in the check of the tracker's
module docstring in medsynth/tracker/train.py.
"""

from __future__ import annotations

import tensorflow as tf

from medsynth.data.keypoints import heatmaps
from medsynth.tracker.config import LOSSES

ALPHA, BETA = 2.0, 4.0


def targets(points: tf.Tensor, classes: tf.Tensor, mask: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(Gaussian heat maps, positives) float32 [n, S, S, C]; positives: 1 at each point's nearest pixel."""
    soft = heatmaps(points, classes, mask, size)
    nearest = tf.clip_by_value(tf.floor(tf.convert_to_tensor(points, tf.float32) + 0.5), 0.0, size - 1.0)
    # A Gaussian of σ = 0.1 px on integer points is 1 at them and < e^-50 one pixel away.
    positives = tf.cast(heatmaps(nearest, classes, mask, size, sigma=0.1) > 0.5, tf.float32)
    return soft, positives


def heatmap_loss(logits: tf.Tensor, soft: tf.Tensor, positives: tf.Tensor, loss: str = "focal") -> tf.Tensor:
    """The batch's loss, summed over pixels and classes and divided by its number of key points."""
    logits = tf.cast(logits, tf.float32)
    log_p, log_not_p = tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)
    count = tf.maximum(tf.reduce_sum(positives), 1.0)
    if loss == "focal":
        p = tf.sigmoid(logits)
        pos = positives * tf.pow(1.0 - p, ALPHA) * log_p
        neg = (1.0 - positives) * tf.pow(1.0 - soft, BETA) * tf.pow(p, ALPHA) * log_not_p
        return -tf.reduce_sum(pos + neg) / count
    if loss == "bce":
        return -tf.reduce_sum(soft * log_p + (1.0 - soft) * log_not_p) / count
    raise ValueError(f"unknown tracker loss {loss!r}; one of {LOSSES}")
