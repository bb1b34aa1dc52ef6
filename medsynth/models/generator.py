"""The generator of the paper's Table 1: up-sampling levels of parallel, concatenated branches.

Table 1 lists one level l (shown for l = 6, filters F = 2**l · 8):

    Conv2d 3x3 (F) · UpSampling2d 2x2 · Conv2d_1 1x1 (2F) · Conv2dTranspose_1 3x3/2 (F)
    · Conv2d_2 1x1 (2F) · Conv2dTranspose_2 1x1/2 (F)

and says the parallel outputs are concatenated. The paper gives no wiring, so
this is the reconstruction of the seed README ("closest concatenating wiring"):

    z ─ Dense(4·4·2**L·w) ─ norm ─ LReLU ─ Reshape(4, 4, ·)
    per level l = L … 1, F = 2**l · w:
        c0 = Conv3x3(F)(x)                    a = UpSampling(c0)
        c1 = Conv1x1(2F)(c0)                  b = ConvT3x3/2(F)(c1)
        c2 = Conv1x1(2F)(c1)                  c = ConvT1x1/2(F)(c2)
        x  = concat[a, b, c]                  (3F channels, twice the size)
    Conv3x3(1) ─ tanh

with norm + LeakyReLU(0.2) after every layer of the level (the six of Table 1
and the concatenation) and no biases anywhere: a bias before a normalisation is
cancelled by it, and the tanh output layer has none either. At 256 px, latent
100, width 8 and batch norm this gives 17,055,472 weights (17,016,912
trainable, 38,560 non-trainable); the paper reports 17,074,528 / 17,016,608 /
57,920, which no natural wiring of Table 1 reproduces (see the seed README).

Key-point conditioning (`condition_channels` > 0, `--condition keypoints`): G also takes the heat
maps [n, S, S, C] of the key points it should draw (`medsynth.data.keypoints.heatmaps`), and every
level's input and the output layer's see them beside their own channels, max-pooled to that
resolution: a key point stays a 1 at every level (average pooling would fade a 1.5 px Gaussian to
0.05 at 4x4), so the coarse levels know which cell holds it and the fine ones where in the cell.
The unconditional G is the same network without these inputs (same weights).
"""

from __future__ import annotations

import math

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.layers import (
    NORMALIZATIONS,
    NearestUpSampling2D,
    normalization,
    spectral_norm,
    use_forward_gradients,
)
from medsynth.sizes import check_size

UPSAMPLINGS = ("resize", "transpose")
BASE = 4  # the projected latent is a BASE x BASE map; each level doubles it


def check_image_size(image_size: int) -> int:
    """`image_size` if the generator can make it (medsynth.sizes), else a ConfigError."""
    return check_size(image_size, "image size")


def levels_for(image_size: int) -> int:
    """Number of up-sampling levels from 4x4 to `image_size` (6 at 256 px, as in the paper)."""
    return int(math.log2(check_image_size(image_size))) - int(math.log2(BASE))


def heatmaps_beside(x: tf.Tensor, maps: tf.Tensor | None, image_size: int, name: str) -> tf.Tensor:
    """`x` with the heat maps (max-pooled to its resolution) beside its channels; `x` when `maps` is None."""
    if maps is None:
        return x
    factor = image_size // int(x.shape[1])
    m = maps if factor == 1 else tf.keras.layers.MaxPooling2D(factor, name=f"{name}_heatmaps")(maps)
    return tf.keras.layers.Concatenate(name=f"{name}_with_heatmaps")([x, m])


def build_generator(
    image_size: int,
    latent_dim: int = 100,
    width: int = 8,
    norm: str = "batch",
    spectral: bool = False,
    upsampling: str = "transpose",
    condition_channels: int = 0,
) -> tf.keras.Model:
    """The generator: z float32 [n, latent_dim] → images [n, S, S, 1] in [-1, 1].

    `width` is the paper's 8 in F = 2**l · 8; `norm` is "batch" (the paper's
    count), "instance" or "group"; `spectral` wraps every kernel in spectral
    normalisation (TF Addons), which the paper may have used but does not say.
    With `condition_channels` C > 0 its inputs are [z, heat maps float32 [n, S, S, C]].
    """
    levels = levels_for(image_size)
    norm = str(norm).lower()
    if latent_dim < 1 or width < 1:
        raise ConfigError(f"latent_dim ({latent_dim}) and width ({width}) must be positive integers")
    if norm not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {norm!r}; use one of: {', '.join(NORMALIZATIONS)}")
    upsampling = str(upsampling).lower()
    if upsampling not in UPSAMPLINGS:
        raise ConfigError(f"unknown up-sampling {upsampling!r}; use one of: {', '.join(UPSAMPLINGS)}")
    layers = tf.keras.layers

    def weighted(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
        return spectral_norm(layer) if spectral else layer

    def norm_act(x: tf.Tensor, name: str) -> tf.Tensor:
        x = normalization(norm, name=f"{name}_norm")(x)
        return layers.LeakyReLU(0.2, name=f"{name}_lrelu")(x)

    def conv(x: tf.Tensor, filters: int, kernel: int, name: str) -> tf.Tensor:
        x = weighted(layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=name))(x)
        return norm_act(x, name)

    def deconv(x: tf.Tensor, filters: int, kernel: int, name: str) -> tf.Tensor:
        if upsampling == "resize":
            x = NearestUpSampling2D(2, name=f"{name}_resize")(x)
            layer = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=name)
        else:
            layer = layers.Conv2DTranspose(
                filters, kernel, strides=2, padding="same", use_bias=False, name=name
            )
        return norm_act(weighted(layer)(x), name)

    if condition_channels < 0:
        raise ConfigError(f"condition_channels must be >= 0, got {condition_channels}")
    z = tf.keras.Input(shape=(latent_dim,), dtype=tf.float32, name="z")
    maps = None
    if condition_channels:
        maps = tf.keras.Input(shape=(image_size, image_size, condition_channels), dtype=tf.float32,
                              name="heatmaps")

    def with_maps(x: tf.Tensor, name: str) -> tf.Tensor:
        return heatmaps_beside(x, maps, image_size, name)

    # Project and reshape. Batch norm normalises the 4·4·C projection feature by
    # feature (the paper's count); instance and group norm need a spatial map, so
    # they come after the reshape.
    channels = 2**levels * width
    x = weighted(layers.Dense(BASE * BASE * channels, use_bias=False, name="project"))(z)
    if norm == "batch":
        x = norm_act(x, "project")
        x = layers.Reshape((BASE, BASE, channels), name="project_reshape")(x)
    else:
        x = layers.Reshape((BASE, BASE, channels), name="project_reshape")(x)
        x = norm_act(x, "project")

    for level in range(levels, 0, -1):
        f = 2**level * width
        p = f"level{level}"
        c0 = conv(with_maps(x, p), f, 3, f"{p}_conv")
        a = norm_act(NearestUpSampling2D(2, name=f"{p}_upsample")(c0), f"{p}_upsample")
        c1 = conv(c0, 2 * f, 1, f"{p}_conv1")
        b = deconv(c1, f, 3, f"{p}_deconv1")
        c2 = conv(c1, 2 * f, 1, f"{p}_conv2")
        c = deconv(c2, f, 1, f"{p}_deconv2")
        x = layers.Concatenate(name=f"{p}_concat")([a, b, c])
        x = norm_act(x, f"{p}_concat")

    images = weighted(
        layers.Conv2D(1, 3, padding="same", use_bias=False, activation="tanh", name="to_image")
    )(with_maps(x, "to_image"))
    generator = tf.keras.Model(z if maps is None else [z, maps], images, name="generator")
    use_forward_gradients(generator)  # its stride-1 convolutions' input gradients as forward convolutions
    return generator
