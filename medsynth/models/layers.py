"""Normalisation layers for the networks, and the one seam to TensorFlow Addons.

The paper uses "experimental functions of TF Addons" in its generator without
saying which. tensorflow-addons is end-of-life, so this is the only module that
imports it: moving to Keras 3 (or to keras' own GroupNormalization) touches this
file and nothing else. Every layer here is made of plain TensorFlow ops, so a
SavedModel that contains them loads without tensorflow-addons installed.
"""

from __future__ import annotations

import math
import warnings

import tensorflow as tf

with warnings.catch_warnings():  # its end-of-life notice, printed on every import; the docstring says it
    warnings.simplefilter("ignore")
    import tensorflow_addons as tfa

from medsynth.errors import ConfigError

NORMALIZATIONS = ("batch", "instance", "group")
GROUPS = 32


class AdaptiveGroupNormalization(tfa.layers.GroupNormalization):
    """Group normalisation whose group count fits the channels it meets.

    The generator's layers have 16 to 1,536 channels (48 = 3·16 after a
    concatenation), so a fixed 32 groups would not divide them all; the largest
    divisor of the channel count up to `groups` keeps the layer usable anywhere.
    """

    def build(self, input_shape: tf.TensorShape) -> None:
        channels = tf.TensorShape(input_shape)[self.axis]
        if channels is not None and self.groups > 0:
            self.groups = math.gcd(self.groups, int(channels))
        super().build(input_shape)


class NearestUpSampling2D(tf.keras.layers.UpSampling2D):
    """UpSampling2D (nearest, channels last) as broadcast and reshape: the same numbers.

    Its gradient is then a sum that XLA compiles (TF 2.15 has no XLA kernel for
    ResizeNearestNeighborGrad, so with Keras' layer no step that trains G can be jit-compiled)
    and that can be differentiated again (gradient penalties).
    """

    def __init__(self, size: int | tuple[int, int] = (2, 2), **kwargs) -> None:  # noqa: ANN003
        super().__init__(size=size, **kwargs)
        if self.interpolation != "nearest" or self.data_format != "channels_last":
            raise ConfigError("NearestUpSampling2D is nearest-neighbour and channels-last only")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        fh, fw = self.size
        _, h, w, c = inputs.shape
        n = tf.shape(inputs)[0]
        x = tf.broadcast_to(inputs[:, :, None, :, None, :], [n, h, fh, w, fw, c])
        return tf.reshape(x, [n, h * fh, w * fw, c])


def normalization(kind: str, name: str | None = None) -> tf.keras.layers.Layer:
    """A fresh normalisation layer of `kind` ("batch", "instance" or "group").

    "batch" is synchronised: under MirroredStrategy its statistics are those of
    the global batch, so a multi-GPU step equals a one-device step (DESIGN.md §3).
    """
    kind = str(kind).lower()
    if kind == "batch":
        return tf.keras.layers.BatchNormalization(synchronized=True, name=name)
    if kind == "instance":
        return tfa.layers.InstanceNormalization(name=name)
    if kind == "group":
        return AdaptiveGroupNormalization(groups=GROUPS, name=name)
    raise ConfigError(f"unknown normalisation {kind!r}; use one of: {', '.join(NORMALIZATIONS)}")


def spectral_norm(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
    """Wrap a Conv/Dense layer so its kernel is divided by its largest singular value (Miyato et al. 2018)."""
    return tfa.layers.SpectralNormalization(layer)


def synchronize_batch_norm(model: tf.keras.Model) -> int:
    """Make every BatchNormalization inside `model` synchronised; returns how many were changed.

    Keras 2.15 reads `synchronized` at call time, but a built BN layer has also
    set `fused=True` (4-D input), and the fused kernel ignores `synchronized`:
    both attributes must change. Used for backbones built by keras.applications,
    which create plain BN layers.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, tf.keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            layer.fused = False
            changed += 1
    return changed


def fuse_batch_norm(model: tf.keras.Model) -> int:
    """Turn `model`'s synchronised BN layers back into plain ones, fused where the input is NHWC.

    For one replica: there is nothing to synchronise, but a synchronised layer still runs as
    separate moment, normalise and update ops, where a fused layer runs one FusedBatchNormV3
    kernel (oneDNN on CPU, cuDNN on GPU). Same weights and statistics; returns how many changed.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not (isinstance(layer, tf.keras.layers.BatchNormalization) and layer.synchronized):
            continue
        layer.synchronized = False
        spec = layer.input_spec
        if spec is not None and spec.ndim == 4 and layer.axis == [3] and layer._fused_can_be_used():
            layer.fused, layer._data_format = True, "NHWC"
        changed += 1
    return changed


# --- 1x1 convolutions with a fast input gradient ----------------------------------------------------
@tf.custom_gradient
def pointwise_conv(x: tf.Tensor, kernel: tf.Tensor):  # noqa: ANN201 - (output, gradient function)
    """A 1x1, stride-1 convolution whose input gradient is itself a 1x1 convolution.

    TF 2.15's CPU kernel for Conv2DBackpropInput is slow on small maps with many channels,
    the exit flow of the backbones (Xception's block14 at 3x3 x 1536 → 2048: 249 ms against
    35 ms for the same FLOPs as a forward convolution with the transposed kernel, measured on
    this project's 2 cores). For a 1x1 kernel ∂L/∂x = ∂L/∂y · Wᵀ exactly, so it runs as that
    forward convolution; ∂L/∂W is the matrix product xᵀ · ∂L/∂y (pruned when W is frozen).
    """
    y = tf.nn.conv2d(x, kernel, 1, "VALID")

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        dx = tf.nn.conv2d(dy, tf.transpose(kernel, [0, 1, 3, 2]), 1, "VALID")
        cin, cout = kernel.shape[2], kernel.shape[3]
        dk = tf.matmul(tf.reshape(x, [-1, cin]), tf.reshape(dy, [-1, cout]), transpose_a=True)
        return dx, tf.reshape(dk, tf.shape(kernel))

    return y, grad


def _pointwise_strided(x: tf.Tensor, kernel: tf.Tensor, strides: tuple[int, int]) -> tf.Tensor:
    # A strided 1x1 convolution reads every s-th pixel from the first, with SAME or VALID padding.
    if tuple(strides) != (1, 1):
        x = x[:, :: strides[0], :: strides[1], :]
    return pointwise_conv(x, kernel)


@tf.keras.saving.register_keras_serializable(package="medsynth")
class PointwiseConv2D(tf.keras.layers.Conv2D):
    """Conv2D with a 1x1 kernel computed by `pointwise_conv` (same variables, same numbers)."""

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        return _pointwise_strided(inputs, tf.cast(kernel, inputs.dtype), self.strides)


@tf.keras.saving.register_keras_serializable(package="medsynth")
class PointwiseSeparableConv2D(tf.keras.layers.SeparableConv2D):
    """SeparableConv2D whose pointwise half is `pointwise_conv` (what tf.nn.separable_conv2d does)."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.nn.depthwise_conv2d(inputs, self.depthwise_kernel, (1, *self.strides, 1),
                                   self.padding.upper(), dilations=self.dilation_rate)
        x = pointwise_conv(x, tf.cast(self.pointwise_kernel, x.dtype))
        if self.use_bias:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


def use_pointwise_gradients(model: tf.keras.Model) -> int:
    """Switch `model`'s 1x1 convolutions to `pointwise_conv`, in place; returns how many changed.

    For networks built by keras.applications (the backbones): their layers keep their
    variables, names and checkpoints; only the classes change, as in `synchronize_batch_norm`.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) not in (tf.keras.layers.Conv2D, tf.keras.layers.SeparableConv2D):
            continue
        if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1):
            continue
        if type(layer) is tf.keras.layers.Conv2D:
            if tuple(layer.kernel_size) != (1, 1) or layer.groups != 1 or layer.padding == "causal":
                continue
            layer.__class__ = PointwiseConv2D
        else:
            layer.__class__ = PointwiseSeparableConv2D
        changed += 1
    return changed
