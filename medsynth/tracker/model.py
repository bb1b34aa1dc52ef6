"""The tracker's network: a small U-Net from a frame to one heat-map logit per key-point class.

Three stride-2 levels down and three up (widths 16/32/64/64 by default), each a pair of 3x3
convolutions with batch norm and ReLU, skips by concatenation. Full-resolution output, so a key
point is found to the pixel before sub-pixel refinement (medsynth.tracker.decode). Down-sampling is
a strided convolution and up-sampling the broadcast NearestUpSampling2D: neither MaxPool's nor
ResizeNearestNeighbor's gradient, so the step is deterministic and XLA-compilable alike.
"""

from __future__ import annotations

import math

import tensorflow as tf

from medsynth.data.keypoints import CLASSES
from medsynth.errors import ConfigError
from medsynth.models.layers import NearestUpSampling2D
from medsynth.tracker.config import NORMS

LEVELS = 3
BN_MOMENTUM = 0.9
GROUPS = 8
PRIOR = 0.1  # CenterNet's head bias: every pixel starts at p = 0.1, so the focal loss starts small


def _norm(kind: str, width: int, name: str) -> tf.keras.layers.Layer:
    if kind == "batch":
        return tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=name)
    return tf.keras.layers.GroupNormalization(groups=min(GROUPS, width), name=name)


def _block(x: tf.Tensor, width: int, name: str, norm: str, stride: int = 1) -> tf.Tensor:
    for i, s in enumerate((stride, 1)):
        x = tf.keras.layers.Conv2D(
            width, 3, strides=s, padding="same", use_bias=False, name=f"{name}_conv{i}"
        )(x)
        x = _norm(norm, width, f"{name}_norm{i}")(x)
        x = tf.keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_tracker(size: int, width: int = 16, norm: str = "batch") -> tf.keras.Model:
    """Frames [n, S, S, 1] in [-1, 1] → logits [n, S, S, len(CLASSES)] (sigmoid: heat maps)."""
    if size % 2**LEVELS or size < 2**LEVELS:
        raise ConfigError(f"tracker frame side {size} must be a multiple of {2**LEVELS}")
    if width < 1:
        raise ConfigError(f"tracker width must be >= 1, got {width}")
    if norm not in NORMS:
        raise ConfigError(f"tracker norm must be one of {', '.join(NORMS)}, got {norm!r}")
    widths = [width * 2 ** min(i, 2) for i in range(LEVELS + 1)]  # 16, 32, 64, 64
    frames = tf.keras.Input((size, size, 1), name="frames")
    x = _block(frames, widths[0], "enc0", norm)
    skips = [x]
    for i in range(1, LEVELS + 1):
        x = _block(x, widths[i], f"enc{i}", norm, stride=2)
        skips.append(x)
    for i in range(LEVELS - 1, -1, -1):
        x = NearestUpSampling2D(name=f"up{i}")(x)
        x = tf.keras.layers.Concatenate(name=f"skip{i}")([x, skips[i]])
        x = _block(x, widths[i], f"dec{i}", norm)
    logits = tf.keras.layers.Conv2D(
        len(CLASSES),
        1,
        name="heatmap_logits",
        bias_initializer=tf.keras.initializers.Constant(-math.log((1 - PRIOR) / PRIOR)),
    )(x)
    return tf.keras.Model(frames, logits, name="tracker")
