"""The discriminator of the paper's Tables 2–3: an ImageNet backbone and a 2,048-weight head.

    frames [n, S, S, 1] in [-1, 1]
      → 3 channels, resized to the backbone's input, its preprocessing   (BackboneInput)
      → backbone without classifier                                       (frozen in the paper)
      → GlobalAveragePooling2D → BatchNormalization(center=False, scale=False) → Dense(1, no bias)
      → logits [n, 1]   (no sigmoid: the loss takes logits)

The `convnet` baseline (not in the paper) has DCGAN's head instead: Flatten → Dense(1) with a bias.

`--d-head projected` replaces the paper's head with Projected GAN's (Sauer et al. 2021): the frozen
backbone is tapped at four resolutions, fixed random 1x1 convolutions mix each tap's channels
(CCM) and a fixed random top-down path mixes the scales (CSM), and one small spectral-normalised
convolutional discriminator per scale gives patch logits, all concatenated: [n, patches]. The
frozen part is the sub-model `d_features`, the learning part `d_head`.

With Xception at 256 px and a frozen backbone this is 20,867,624 weights of
which 2,048 are trainable, exactly the paper's Table 3 (the head's BN adds
4,096 non-trainable moving statistics; the usual GAP → Dense(1) head would
have 2,049 trainable).

Key-point conditioning (`condition_channels` C > 0, `--condition keypoints`): D's inputs are
[frames, heat maps [n, S, S, C]] and it judges the pair. The convnet baseline takes the heat maps
as C more input channels beside the frame's (it learns from scratch, so its first layer can);
the projected head puts them, max-pooled to each scale, beside each projected feature map before
that scale's convolutions (the frozen features see the frame alone). The paper's head is refused:
a pretrained backbone's input has room for no more channels, and its global average pooling
keeps no trace of where anything is.

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
from medsynth.models.layers import SpectralDepthwiseConv2D, spectral_norm, synchronize_batch_norm

log = logging.getLogger("medsynth")

MODES = ("frozen", "trainable")
# auto: the backbone's own (the paper's; DCGAN's for convnet; Projected GAN's for EfficientNet-Lite0)
HEADS = ("auto", "paper", "projected")
# Projected GAN's projector and per-scale discriminators (its pg_modules), sized as there: the taps'
# channels are mixed to 64·2^i, the scale mixing halves them again on the way up (but the finest),
# and each per-scale D halves its map as if the frames were 256 px (4, 3, 2, 1 blocks: the paper
# found the fixed counts best at every resolution) down to a map of 8 px or less, then 4x4 logits.
# SCALE_CHANNELS: the width of the block that outputs a map of a given nominal side (Projected GAN's;
# medsynth's recipe caps it at 256, for CPUs).
MIX_CHANNELS = (64, 128, 256, 512)
NOMINAL_SIDES = (128, 64, 32, 16)
SCALE_CHANNELS = {64: 64, 32: 128, 16: 256, 8: 512}  # Projected GAN's; `max_channels` caps them
SCALE_MIXINGS = ("residual", "projected-gan")
# the per-scale discriminators' down blocks (blocks.DownBlock): conv (SN conv 4x4/2 → BN → LeakyReLU;
# their FastGAN configuration) or separable (SN depthwise 3x3 → SN pointwise 1x1 → BN → LeakyReLU →
# average pool 2; their `separable` discriminators, as their StyleGAN2 configuration runs them)
D_BLOCKS = ("conv", "separable")


CONDITIONAL_HEADS = ("dcgan", "projected")


def check_conditional_head(backbone: str, head: str) -> None:
    """A ConfigError unless D with `head` can judge a frame together with its key points."""
    if head not in CONDITIONAL_HEADS:
        raise ConfigError(
            f"--condition keypoints needs a discriminator that sees where the key points are: "
            f"--backbone convnet, or --d-head projected (e.g. --backbone efficientnet_lite0), not "
            f"{backbone} with the {head} head"
        )


def resolve_head(backbone: str, head: str | None) -> str:
    """The head to build: `head`, or the backbone's own for auto/None (idempotent: a resolved config's
    head, "dcgan" for the baseline included, resolves to itself)."""
    choice = "auto" if head is None else str(head).lower()
    own = get_backbone(backbone).head
    if choice not in HEADS and choice != own:
        raise ConfigError(f"unknown --d-head {head!r}; use one of: {', '.join(HEADS)}")
    return own if choice == "auto" else choice


def usable_weights(backbone: str, weights: str | os.PathLike | None) -> str:
    """The weights `backbone` is built with: `imagenet` for one that has none (the convnet baseline)
    means none, since a pipeline compares backbones under one weights parameter."""
    weights = normalize_weights(weights)
    return "none" if weights == "imagenet" and not get_backbone(backbone).has_imagenet else weights


def resolve_mode(
    weights: str | os.PathLike | None, mode: str | None, head: str | None = None, backbone: str | None = None
) -> str:
    """The backbone mode to use: `mode` if given, else frozen for pretrained weights, trainable for none
    (the weights `backbone` can really load, when it is named).

    The projected head is frozen features by design: it freezes any backbone, and refuses `trainable`.
    """
    if backbone is not None:
        weights = usable_weights(backbone, weights)
    if mode is not None:
        mode = str(mode).lower()
        if mode not in MODES:
            raise ConfigError(f"unknown backbone mode {mode!r}; use one of: {', '.join(MODES)}")
        if mode == "trainable" and head == "projected":
            raise ConfigError("--d-head projected needs a frozen backbone (Projected GAN trains only the "
                              "per-scale heads); drop --backbone-mode trainable or use --d-head paper")
        return mode
    if head == "projected":
        return "frozen"
    return "trainable" if normalize_weights(weights) == "none" else "frozen"


def mode_reason(weights: str | os.PathLike | None, mode: str | None, head: str | None = None) -> str:
    """One line saying which mode `resolve_mode` picks and why (for logs and the summary)."""
    resolved = resolve_mode(weights, mode, head)
    weights = normalize_weights(weights)
    if mode is None and head == "projected":
        return "backbone frozen: the projected head reads fixed features (Projected GAN)"
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
    head: str | None = None,
    seed: int = 0,
    condition_channels: int = 0,
    feature_size: int = 0,
    scale_mixing: str = "residual",
    max_channels: int = 256,
    blocks: str = "conv",
) -> tf.keras.Model:
    """D: frames [n, S, S, 1] in [-1, 1] → logits [n, 1] (projected head: [n, patches]).

    `seed` fixes the projected head's random mixing, the same on every worker and run. With
    `condition_channels` C > 0 its inputs are [frames, heat maps float32 [n, S, S, C]].
    `feature_size`: the side smaller frames are upsampled to before the backbone (0: the frame size, at
    least the backbone's minimum; Projected GAN: 224, and as its interp224 a larger frame keeps its size).
    `scale_mixing`, `max_channels` and `blocks`: the projected head's (see `projected_discriminator`).
    """
    check_image_size(image_size)
    spec = get_backbone(backbone)
    head = resolve_head(spec.name, head)
    if condition_channels:
        check_conditional_head(spec.name, head)
    if normalize_weights(weights) != usable_weights(spec.name, weights):
        log.info("discriminator %s: no ImageNet weights exist for it, so it learns from scratch", spec.name)
    weights = usable_weights(spec.name, weights)
    resolved = resolve_mode(weights, mode, head)
    if resolved == "frozen" and weights == "none":
        log.warning("discriminator %s: %s", spec.name, mode_reason(weights, mode, head))
    else:
        log.info("discriminator %s: %s", spec.name, mode_reason(weights, mode, head))
    size = spec.input_size(max(feature_size, image_size))
    if head == "projected":
        net = build_backbone(spec.name, size, weights)
        return projected_discriminator(image_size, spec, net, seed, condition_channels, scale_mixing,
                                       max_channels, blocks)
    net = build_backbone(spec.name, size, weights, channels=3 + condition_channels)
    return discriminator_from_backbone(image_size, spec, net, resolved, head, condition_channels)


def tap_layers(spec: BackboneSpec, net: tf.keras.Model, count: int = 4) -> list[str]:
    """The layers the projected head reads: the spec's stages, or the last layer at each of the
    `count` coarsest resolutions below the input (a stage's output, for a CNN built stage by stage)."""
    if spec.stages:
        return list(spec.stages)
    size = net.input_shape[1]
    last: dict[int, str] = {}
    for layer in net.layers:
        shape = layer.output_shape
        if isinstance(shape, tuple) and len(shape) == 4 and shape[1] is not None and shape[1] < size:
            last[int(shape[1])] = layer.name
    sides = sorted(last, reverse=True)
    if len(sides) < count:
        raise ConfigError(
            f"--d-head projected taps {count} resolutions of the backbone, and {spec.name} has only "
            f"{len(sides)} below its input; use --d-head paper, or another backbone"
        )
    return [last[s] for s in sides[-count:]]


def projected_discriminator(
    image_size: int, spec: BackboneSpec, net: tf.keras.Model, seed: int = 0, condition_channels: int = 0,
    scale_mixing: str = "residual", max_channels: int = 256, blocks: str = "conv",
) -> tf.keras.Model:
    """Projected GAN's D around the frozen backbone `net` (see the module docstring).

    Scale mixing (CSM), coarse to fine: `projected-gan` is theirs (pg_modules/projector.py and
    blocks.FeatureFusionBlock): add the coarser output to this scale's CCM map, bilinear x2 with
    aligned corners, a 1x1 convolution, with PyTorch's random biases in every CCM/CSM convolution.
    `residual` (medsynth's first reading of the paper): two fixed MiDaS residual units per scale around
    the add, bias-free. `max_channels` caps the per-scale blocks' width (theirs: 512 at 8 px); `blocks`
    is their down blocks' kind (D_BLOCKS: separable is about 4x fewer multiply-adds at these widths).
    """
    if scale_mixing not in SCALE_MIXINGS:
        raise ConfigError(f"unknown scale mixing {scale_mixing!r}; use one of: {', '.join(SCALE_MIXINGS)}")
    if blocks not in D_BLOCKS:
        raise ConfigError(f"unknown discriminator blocks {blocks!r}; use one of: {', '.join(D_BLOCKS)}")
    theirs = scale_mixing == "projected-gan"
    layers = tf.keras.layers
    taps = tap_layers(spec, net)
    tapped = tf.keras.Model(net.input, [net.get_layer(t).output for t in taps], name=f"{net.name}_taps")
    tapped.trainable = False

    images = tf.keras.Input(shape=(image_size, image_size, 1), dtype=tf.float32, name="images")
    x = BackboneInput(spec.name, net.input_shape[1], name="to_backbone_input")(images)
    feats = tapped(x, training=False)
    counter = iter(range(1000))

    def fixed(filters: int, kernel: int, name: str, fan_in: int | None = None) -> tf.keras.layers.Layer:
        """A convolution with seeded random weights that never learns (PyTorch's default init: weights and,
        with their mixing, biases uniform in ±1/sqrt(fan_in))."""
        init = tf.keras.initializers.VarianceScaling(
            1 / 3, "fan_in", "uniform", seed=seed * 1000 + next(counter))
        bias = "zeros"
        if theirs:
            bound = 1 / (fan_in * kernel * kernel) ** 0.5
            bias = tf.keras.initializers.RandomUniform(-bound, bound, seed=seed * 1000 + next(counter))
        return layers.Conv2D(filters, kernel, padding="same", kernel_initializer=init, use_bias=theirs,
                             bias_initializer=bias, trainable=False, name=name)

    def residual(t: tf.Tensor, name: str) -> tf.Tensor:  # MiDaS' residual conv unit, fixed weights
        c = t.shape[-1]
        y = fixed(c, 3, f"{name}_conv1")(layers.ReLU(name=f"{name}_relu1")(t))
        y = fixed(c, 3, f"{name}_conv2")(layers.ReLU(name=f"{name}_relu2")(y))
        return layers.Add(name=f"{name}_add")([t, y])

    mixed = [fixed(c, 1, f"ccm{i}", f.shape[-1])(f)
             for i, (c, f) in enumerate(zip(MIX_CHANNELS, feats, strict=True))]
    out: list[tf.Tensor] = [None] * len(mixed)  # type: ignore[list-item]
    up = None
    for i in range(len(mixed) - 1, -1, -1):  # coarse to fine: fuse, (refine,) up-sample x2, project
        if up is None:
            t = mixed[i]
        else:
            aligned = layers.Resizing(*mixed[i].shape[1:3], name=f"csm{i}_align")(up)
            skip = mixed[i] if theirs else residual(mixed[i], f"csm{i}_skip")
            t = layers.Add(name=f"csm{i}_fuse")([aligned, skip])
        if not theirs:
            t = residual(t, f"csm{i}_refine")
        h, w = t.shape[1:3]
        t = (_UpsampleAligned(name=f"csm{i}_up") if theirs
             else layers.Resizing(2 * h, 2 * w, interpolation="bilinear", name=f"csm{i}_up"))(t)
        width = MIX_CHANNELS[i] // 2 if i > 0 else MIX_CHANNELS[i]
        out[i] = up = fixed(width, 1, f"csm{i}_out", t.shape[-1])(t)
    features = tf.keras.Model(images, out, name="d_features")
    features.trainable = False

    head_inputs = [tf.keras.Input(shape=m.shape[1:], name=f"scale{i}") for i, m in enumerate(out)]
    scales = head_inputs
    if condition_channels:  # each scale's map with the heat maps at its resolution beside it
        maps = _heatmaps_input(image_size, condition_channels)
        scales = [
            layers.Concatenate(name=f"scale{i}_with_maps")([t, _resize_maps(maps, t.shape[1], f"scale{i}")])
            for i, t in enumerate(head_inputs)
        ]
        head_inputs = [*head_inputs, maps]
    logits = [_scale_discriminator(t, i, NOMINAL_SIDES[i], max_channels, bias=theirs,
                                   separable=blocks == "separable")
              for i, t in enumerate(scales)]
    head = tf.keras.Model(head_inputs, layers.Concatenate(name="logits")(logits), name="d_head")
    if not condition_channels:
        return tf.keras.Model(images, head(features(images)), name="discriminator")
    maps = _heatmaps_input(image_size, condition_channels)
    return tf.keras.Model([images, maps], head([*features(images), maps]), name="discriminator")


def _heatmaps_input(image_size: int, channels: int) -> tf.Tensor:
    return tf.keras.Input(shape=(image_size, image_size, channels), dtype=tf.float32, name="heatmaps")


def _resize_maps(maps: tf.Tensor, side: int, name: str) -> tf.Tensor:
    """Heat maps at `side` px: max-pooled where it divides their side (a key point stays a 1), else
    bilinear."""
    size = int(maps.shape[1])
    if side == size:
        return maps
    if size % side == 0:
        return tf.keras.layers.MaxPooling2D(size // side, name=f"{name}_heatmaps")(maps)
    return tf.keras.layers.Resizing(side, side, interpolation="bilinear", name=f"{name}_heatmaps")(maps)


def _scale_discriminator(x: tf.Tensor, scale: int, nominal: int, max_channels: int = 256,
                         bias: bool = False, separable: bool = False) -> tf.Tensor:
    """Down blocks (D_BLOCKS) as for a `nominal`-px map down to 8, then SN 4x4 patch logits (valid
    where the map allows, else same). `bias`: Projected GAN's down convolutions keep PyTorch's default
    bias (the BN after them cancels it; only the parameter count differs); their separable blocks have
    none."""
    layers = tf.keras.layers
    side, k = int(x.shape[1]), 0
    while nominal > 8:
        nominal //= 2
        width = min(SCALE_CHANNELS[nominal], max_channels)
        if separable:  # blocks.DownBlock(separable=True): SeparableConv2d(in, out, 3) → BN → LReLU → pool
            x = SpectralDepthwiseConv2D(3, padding="same", use_bias=False, name=f"d{scale}_down{k}_dw")(x)
            x = spectral_norm(layers.Conv2D(width, 1, use_bias=False, name=f"d{scale}_down{k}"))(x)
        else:
            conv = layers.Conv2D(width, 4, 2, padding="same", use_bias=bias, name=f"d{scale}_down{k}")
            x = spectral_norm(conv)(x)
        x = layers.BatchNormalization(synchronized=True, name=f"d{scale}_down{k}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"d{scale}_down{k}_lrelu")(x)
        if separable:
            x = layers.AveragePooling2D(2, padding="same", name=f"d{scale}_down{k}_pool")(x)
        side, k = (side + 1) // 2, k + 1
    padding = "valid" if side >= 4 else "same"
    x = spectral_norm(layers.Conv2D(1, 4, padding=padding, use_bias=False, name=f"d{scale}_logits"))(x)
    return layers.Flatten(name=f"d{scale}_patches")(x)


class _UpsampleAligned(tf.keras.layers.Layer):
    """Bilinear x2 with aligned corners (PyTorch's `interpolate(..., align_corners=True)`), which
    Keras' Resizing does not offer."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        h, w = int(x.shape[1]), int(x.shape[2])
        return tf.raw_ops.ResizeBilinear(images=x, size=[2 * h, 2 * w], align_corners=True)


def discriminator_from_backbone(
    image_size: int, spec: BackboneSpec, net: tf.keras.Model, mode: str, head: str = "auto",
    condition_channels: int = 0,
) -> tf.keras.Model:
    """Put the input mapping and the paper's (or the baseline's, "dcgan") head around a built `net`
    (built for 3 + `condition_channels` input channels: the frame's, then the heat maps)."""
    head = spec.head if head == "auto" else head
    size = net.input_shape[1]
    images = tf.keras.Input(shape=(image_size, image_size, 1), dtype=tf.float32, name="images")
    inputs: tf.Tensor | list[tf.Tensor] = images
    x = BackboneInput(spec.name, size, name="to_backbone_input")(images)
    if condition_channels:
        maps = _heatmaps_input(image_size, condition_channels)
        inputs = [images, maps]
        x = tf.keras.layers.Concatenate(name="with_heatmaps")([x, _resize_maps(maps, size, "input")])
    if mode == "frozen":
        net.trainable = False
        x = net(x, training=False)
    else:
        # Synchronised BN: under MirroredStrategy the backbone's batch statistics
        # are those of the global batch, so N devices compute what one would.
        synchronize_batch_norm(net)
        x = net(x)
    if head == "dcgan":  # the baseline keeps its feature map's layout, as DCGAN's D does
        x = tf.keras.layers.Flatten(name="features")(x)
        logits = tf.keras.layers.Dense(1, name="logit")(x)
        return tf.keras.Model(inputs, logits, name="discriminator")
    x = tf.keras.layers.GlobalAveragePooling2D(name="features")(x)
    x = tf.keras.layers.BatchNormalization(center=False, scale=False, synchronized=True, name="head_norm")(x)
    logits = tf.keras.layers.Dense(1, use_bias=False, name="logit")(x)
    return tf.keras.Model(inputs, logits, name="discriminator")


def bilinear_resizes(discriminator: tf.keras.Model) -> list[str]:
    """The layers that resize the frames bilinearly on their way to D's logits: TF has no gradient of
    ResizeBilinearGrad, so a penalty on D's input gradient (R1) cannot train through them."""
    names = []
    for layer in discriminator._flatten_layers(include_self=False, recursive=True):
        if layer.name.endswith("_heatmaps"):  # the key points' maps, not the frames' path
            continue
        if isinstance(layer, BackboneInput):
            side = layer.input_shape[1] if isinstance(layer.input_shape, tuple) else None
            if side is not None and side != layer.size:
                names.append(layer.name)
        elif isinstance(layer, _UpsampleAligned) or (
                isinstance(layer, tf.keras.layers.Resizing) and layer.interpolation == "bilinear"):
            names.append(layer.name)
    return names


def backbone_of(discriminator: tf.keras.Model) -> tf.keras.Model:
    """The backbone network inside a model made by `build_discriminator`."""
    for layer in discriminator.layers:
        if isinstance(layer, tf.keras.Model):
            return layer
    raise ValueError(f"{discriminator.name} has no backbone model inside")
