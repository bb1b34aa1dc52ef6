"""FastGAN's generator (Liu et al., ICLR 2021) as Projected GAN runs it (`--generator fastgan`).

Read from autonomousvision/projected-gan, `pg_modules/networks_fastgan.py` (FastganSynthesis, the
`fastgan` configuration: UpBlockBig) and `pg_modules/blocks.py`:

    z ─ z · rsqrt(mean(z²) + 1e-8)                          (normalize_second_moment)
      ─ SN ConvT 4x4 on 1x1 (2·nfc[4]) ─ BN ─ GLU            (InitLayer: a 4x4 map)
    per side s = 8 … S (UpBlockBig):
        nearest x2 ─ SN Conv3x3 (2·nfc[s]) ─ BN ─ GLU ─ SN Conv3x3 (2·nfc[s]) ─ BN ─ GLU
        × SE(feat at s/16) for s ≥ 64                          (skip-layer excitation)
    SN Conv3x3 (1, bias) ─ tanh

with nfc[s] = multiplier[s] · ngf channels (16, 8, 4, 2, 2, 1, 0.5 at 4 … 256 px), GLU(x) = the
first half of the channels times the sigmoid of the second, and SE(small) = avg-pool to 4x4 ─
SN Conv4x4 valid ─ swish ─ SN Conv1x1 ─ sigmoid: one gate per channel of the big map. Every
convolution (and the initial projection) is spectrally normalised, with PyTorch's semantics
(`layers.SpectralConv2D`). `width` is their ngf: 128 in Projected GAN, 256 channels at 64 px.

Where it departs from networks_fastgan.py, and why:
- Output through tanh, as FastGAN's own code (Projected GAN leaves it linear and clamps when it
  saves): this project's contract is frames in [-1, 1] (the export maps them to uint8).
- No NoiseInjection. Its noise is drawn inside G (torch.randn per call); here every random number
  of a step is a stateless function of (seed, step) so that replicas and a resumed run agree
  bit for bit, and an exported model serves the same frame for the same seed. Its weight starts at 0.
- Sizes below 128 px: upstream only builds 128 px and up (at 64 px `feat_last` is never set). Here
  the last up-block makes any power-of-two size from 8 px; a 64 px G keeps se_64 (4 → 64), and
  under 64 px, where no map is 16x smaller, the last level is excited by the 4x4 map, so every
  size has a skip-layer excitation.
- The initial ConvTranspose 4x4 on a 1x1 map is the same linear map as a Dense to 4·4·C; its
  spectral norm is that map's (PyTorch's reshapes the ConvTranspose weight per output channel).
- One grey channel; batch norm is the project's synchronised one (fused on one replica), with PyTorch's
  default momentum (BN_MOMENTUM).
- Key-point conditioning (`condition_channels` > 0): the heat maps, max-pooled, beside every
  up-block's input and the output layer's, as in Table 1's generator (generator.heatmaps_beside);
  Projected GAN's conditional FastGAN is class-conditional (conditional BN), which key points are not.
"""

from __future__ import annotations

import math

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.generator import check_image_size, heatmaps_beside
from medsynth.models.layers import (
    NORMALIZATIONS,
    NearestUpSampling2D,
    SpectralConv2D,
    SpectralDense,
    normalization,
)

# nfc_multi of networks_fastgan.py: channels at each side, in units of ngf
CHANNELS = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
SE_RATIO = 16  # se_64 (4 → 64), se_128 (8 → 128), se_256 (16 → 256), se_512 (32 → 512)
# nn.BatchNorm2d's default momentum 0.1 in Keras' convention: its moving statistics follow G about ten
# times faster than Keras' 0.99 (which lags ~100 steps), so sampling G in inference mode soon after a
# start or a change sees the statistics it has
BN_MOMENTUM = 0.9


@tf.keras.saving.register_keras_serializable(package="medsynth")
class GLU(tf.keras.layers.Layer):
    """Gated linear unit over channels: x[..., :c] · sigmoid(x[..., c:]) (blocks.GLU)."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        a, b = tf.split(x, 2, axis=-1)
        return a * tf.sigmoid(b)

    def compute_output_shape(self, input_shape):  # noqa: ANN001, ANN201
        return tf.TensorShape(input_shape)[:-1].concatenate([input_shape[-1] // 2])


@tf.keras.saving.register_keras_serializable(package="medsynth")
class SecondMomentNormalization(tf.keras.layers.Layer):
    """z · rsqrt(mean(z²) + 1e-8): z mapped to the sphere of radius √dim (ProGAN; networks_fastgan's
    normalize_second_moment)."""

    def call(self, z: tf.Tensor) -> tf.Tensor:
        return z * tf.math.rsqrt(tf.reduce_mean(tf.square(z), axis=-1, keepdims=True) + 1e-8)


def channels(side: int, width: int) -> int:
    """FastGAN's nfc[side] for ngf = `width` (at least 1)."""
    return max(1, int(CHANNELS[side] * width))


def excitation_sources(image_size: int) -> dict[int, int]:
    """{big side: small side} of the skip-layer excitations of a G making `image_size` frames."""
    pairs = {s: s // SE_RATIO for s in CHANNELS if s // SE_RATIO >= 4 and s <= image_size}
    if not pairs and image_size > 4:
        pairs = {image_size: 4}  # under 64 px: the last level, from the 4x4 map
    return pairs


def build_fastgan(
    image_size: int,
    latent_dim: int = 100,
    width: int = 12,
    norm: str = "batch",
    condition_channels: int = 0,
) -> tf.keras.Model:
    """FastGAN's generator: z float32 [n, latent_dim] → images [n, S, S, 1] in [-1, 1].

    `width` is FastGAN's ngf (channels: 16·ngf at 4 px down to 2·ngf at 64 px); `norm` batch (as
    FastGAN), instance or group. With `condition_channels` C > 0 its inputs are [z, heat maps
    float32 [n, S, S, C]], as build_generator's.
    """
    check_image_size(image_size)
    norm = str(norm).lower()
    if latent_dim < 1 or width < 1:
        raise ConfigError(f"latent_dim ({latent_dim}) and width ({width}) must be positive integers")
    if norm not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalisation {norm!r}; use one of: {', '.join(NORMALIZATIONS)}")
    if condition_channels < 0:
        raise ConfigError(f"condition_channels must be >= 0, got {condition_channels}")
    if image_size > max(CHANNELS):
        raise ConfigError(f"FastGAN's generator makes up to {max(CHANNELS)} px, not {image_size}")
    layers = tf.keras.layers

    def conv(x: tf.Tensor, filters: int, kernel: int, name: str, padding: str = "same") -> tf.Tensor:
        return SpectralConv2D(filters, kernel, padding=padding, use_bias=False, name=name)(x)

    def norm_glu(x: tf.Tensor, name: str) -> tf.Tensor:
        return GLU(name=f"{name}_glu")(normalization(norm, f"{name}_norm", BN_MOMENTUM)(x))

    z = tf.keras.Input(shape=(latent_dim,), dtype=tf.float32, name="z")
    maps = None
    if condition_channels:
        maps = tf.keras.Input(shape=(image_size, image_size, condition_channels), dtype=tf.float32,
                              name="heatmaps")

    c = channels(4, width)
    x = SecondMomentNormalization(name="z_normalize")(z)
    x = SpectralDense(4 * 4 * 2 * c, use_bias=False, name="init")(x)
    x = norm_glu(layers.Reshape((4, 4, 2 * c), name="init_reshape")(x), "init")
    features = {4: x}
    sources = excitation_sources(image_size)
    for level in range(1, int(math.log2(image_size)) - 1):
        side, p = 4 * 2**level, f"up{4 * 2**level}"
        c = channels(side, width)
        x = NearestUpSampling2D(2, name=f"{p}_upsample")(heatmaps_beside(x, maps, image_size, p))
        x = norm_glu(conv(x, 2 * c, 3, f"{p}_conv1"), f"{p}_1")
        x = norm_glu(conv(x, 2 * c, 3, f"{p}_conv2"), f"{p}_2")
        if side in sources:
            x = _excite(features[sources[side]], x, f"se{sources[side]}_{side}")
        features[side] = x

    images = SpectralConv2D(1, 3, padding="same", activation="tanh", name="to_image")(
        heatmaps_beside(x, maps, image_size, "to_image"))
    return tf.keras.Model(z if maps is None else [z, maps], images, name="fastgan_generator")


def _excite(small: tf.Tensor, big: tf.Tensor, name: str) -> tf.Tensor:
    """Skip-layer excitation (blocks.SEBlock): `big` times per-channel gates computed from `small`."""
    layers = tf.keras.layers
    side, c = int(small.shape[1]), int(big.shape[-1])
    x = layers.AveragePooling2D(side // 4, name=f"{name}_pool")(small) if side > 4 else small
    x = SpectralConv2D(c, 4, padding="valid", use_bias=False, name=f"{name}_conv1")(x)  # [n, 1, 1, c]
    x = layers.Activation("swish", name=f"{name}_swish")(x)
    x = SpectralConv2D(c, 1, use_bias=False, activation="sigmoid", name=f"{name}_conv2")(x)
    return layers.Multiply(name=name)([big, x])
