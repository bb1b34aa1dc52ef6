"""The discriminator of the paper's Tables 2–3: an ImageNet backbone and a 2,048-weight head.

    frames [n, S, S, 1] in [-1, 1]
      → 3 channels, resized to the backbone's input, its preprocessing   (BackboneInput)
      → backbone without classifier                                       (frozen in the paper)
      → GlobalAveragePooling2D → BatchNormalization(center=False, scale=False) → Dense(1, no bias)
      → logits [n, 1]   (no sigmoid: the loss takes logits)

The `convnet` baseline (not in the paper) has DCGAN's head instead: Flatten → Dense(1) with a bias.

With Xception at 256 px and a frozen backbone this is 20,867,624 weights of
which 2,048 are trainable, exactly the paper's Table 3 (the head's BN adds
4,096 non-trainable moving statistics; the usual GAP → Dense(1) head would
have 2,049 trainable).

Frozen means `backbone.trainable = False` and calling it with
`training=False`, so its BN layers keep their ImageNet statistics (the keras
transfer-learning rule). Train D through `discriminator.trainable_variables`;
do not toggle `discriminator.trainable`, since setting it back to True would
unfreeze the backbone too.
"""

from __future__ import annotations

import logging
import os

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.backbones import (
    BackboneInput,
    BackboneSpec,
    build_backbone,
    get_backbone,
    normalize_weights,
)
from medsynth.models.generator import check_image_size
from medsynth.models.layers import synchronize_batch_norm

log = logging.getLogger("medsynth")

MODES = ("frozen", "trainable")


def resolve_mode(weights: str | os.PathLike | None, mode: str | None) -> str:
    """The backbone mode to use: `mode` if given, else frozen for pretrained weights, trainable for none."""
    if mode is not None:
        mode = str(mode).lower()
        if mode not in MODES:
            raise ConfigError(f"unknown backbone mode {mode!r}; use one of: {', '.join(MODES)}")
        return mode
    return "trainable" if normalize_weights(weights) == "none" else "frozen"


def mode_reason(weights: str | os.PathLike | None, mode: str | None) -> str:
    """One line saying which mode `resolve_mode` picks and why (for logs and the summary)."""
    resolved = resolve_mode(weights, mode)
    weights = normalize_weights(weights)
    if mode is not None:
        if resolved == "frozen" and weights == "none":
            return ("backbone frozen, as asked, with random weights (none): "
                    "the head will only see random features")
        return f"backbone {resolved}, as asked"
    if resolved == "trainable":
        return ("backbone trainable: the default for weights 'none', "
                "since a frozen random backbone would give the head only random features")
    source = "ImageNet weights" if weights == "imagenet" else f"weights from {weights}"
    return f"backbone frozen: the default for {source} (the paper trains only the head)"


def build_discriminator(
    image_size: int,
    backbone: str = "xception",
    weights: str | os.PathLike | None = "imagenet",
    mode: str | None = None,
) -> tf.keras.Model:
    """D: frames [n, S, S, 1] in [-1, 1] → logits [n, 1]. See the module docstring."""
    check_image_size(image_size)
    spec = get_backbone(backbone)
    weights = normalize_weights(weights)
    if weights == "imagenet" and not spec.in_table2:
        # A pipeline compares backbones under one weights parameter; the baseline has none to load.
        log.info("discriminator %s: no ImageNet weights exist for it, so it learns from scratch", spec.name)
        weights = "none"
    resolved = resolve_mode(weights, mode)
    if mode is None:
        log.info("discriminator %s: %s", spec.name, mode_reason(weights, mode))
    elif resolved == "frozen" and weights == "none":
        log.warning("discriminator %s: %s", spec.name, mode_reason(weights, mode))
    net = build_backbone(spec.name, spec.input_size(image_size), weights)
    return discriminator_from_backbone(image_size, spec, net, resolved)


def discriminator_from_backbone(
    image_size: int, spec: BackboneSpec, net: tf.keras.Model, mode: str
) -> tf.keras.Model:
    """Put the input mapping and the head around an already built backbone `net`."""
    size = net.input_shape[1]
    images = tf.keras.Input(shape=(image_size, image_size, 1), dtype=tf.float32, name="images")
    x = BackboneInput(spec.name, size, name="to_backbone_input")(images)
    if mode == "frozen":
        net.trainable = False
        x = net(x, training=False)
    else:
        # Synchronised BN: under MirroredStrategy the backbone's batch statistics
        # are those of the global batch, so N devices compute what one would.
        synchronize_batch_norm(net)
        x = net(x)
    if spec.head == "dcgan":  # the baseline keeps its feature map's layout, as DCGAN's D does
        x = tf.keras.layers.Flatten(name="features")(x)
        logits = tf.keras.layers.Dense(1, name="logit")(x)
        return tf.keras.Model(images, logits, name="discriminator")
    x = tf.keras.layers.GlobalAveragePooling2D(name="features")(x)
    x = tf.keras.layers.BatchNormalization(center=False, scale=False, synchronized=True, name="head_norm")(x)
    logits = tf.keras.layers.Dense(1, use_bias=False, name="logit")(x)
    return tf.keras.Model(images, logits, name="discriminator")


def backbone_of(discriminator: tf.keras.Model) -> tf.keras.Model:
    """The backbone network inside a model made by `build_discriminator`."""
    for layer in discriminator.layers:
        if isinstance(layer, tf.keras.Model):
            return layer
    raise ValueError(f"{discriminator.name} has no backbone model inside")
