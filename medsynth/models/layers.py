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


def _nearest_upsample(x: tf.Tensor, fh: int, fw: int) -> tf.Tensor:
    """Nearest up-sampling by (fh, fw) as broadcast and reshape; its gradient sums each fh x fw block
    as an average pool times fh·fw (exact: a power-of-two block count scales exactly).

    The broadcast's own gradient is a reduce_sum over two non-adjacent axes of a 6-D tensor, which
    TF 2.15's CPU kernel runs slowly: 12.1 ms for [16, 64, 64, 32] where the pool takes 1.9 ms
    (AMD EPYC family 25, best of 20) — 5 % of the demo's step before this change.
    """
    _, h, w, c = x.shape

    @tf.custom_gradient
    def up(x: tf.Tensor):  # noqa: ANN202 - (output, gradient function)
        n = tf.shape(x)[0]
        y = tf.broadcast_to(x[:, :, None, :, None, :], [n, h, fh, w, fw, c])
        y = tf.reshape(y, [n, h * fh, w * fw, c])

        def grad(dy: tf.Tensor) -> tf.Tensor:
            return tf.nn.avg_pool2d(dy, (fh, fw), (fh, fw), "VALID") * tf.cast(fh * fw, dy.dtype)

        return y, grad

    return up(x)


class NearestUpSampling2D(tf.keras.layers.UpSampling2D):
    """UpSampling2D (nearest, channels last) as broadcast and reshape: the same numbers.

    Its gradient is then an average pool that XLA compiles (TF 2.15 has no XLA kernel for
    ResizeNearestNeighborGrad, so with Keras' layer no step that trains G can be jit-compiled)
    and that can be differentiated again (gradient penalties).
    """

    def __init__(self, size: int | tuple[int, int] = (2, 2), **kwargs) -> None:  # noqa: ANN003
        super().__init__(size=size, **kwargs)
        if self.interpolation != "nearest" or self.data_format != "channels_last":
            raise ConfigError("NearestUpSampling2D is nearest-neighbour and channels-last only")

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return _nearest_upsample(inputs, *self.size)


@tf.keras.saving.register_keras_serializable(package="medsynth")
class MinibatchStddev(tf.keras.layers.Layer):
    """ProGAN's minibatch standard deviation (Karras et al. 2018): one more channel holding how much
    the frames of a small group differ, so D sees a collapsed generator (every sample alike).

    Groups are `group_size` *consecutive* frames, at most 4 and dividing half the batch: D's batch is
    [real; fake] with equal halves, so no group mixes real and generated frames (ProGAN's strided
    groups would).
    """

    def __init__(self, group_size: int = 4, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(x)
        half = shape[0] // 2
        g = tf.constant(1)
        for size in range(2, self.group_size + 1):
            g = tf.where(tf.equal(half % size, 0), size, g)  # the largest size <= group_size dividing half
        groups = tf.reshape(tf.cast(x, tf.float32), tf.concat([[-1, g], shape[1:]], 0))
        spread = tf.sqrt(tf.math.reduce_variance(groups, axis=1) + 1e-8)  # [n / g, h, w, c]
        spread = tf.repeat(tf.reduce_mean(spread, axis=[1, 2, 3]), g)  # one number per frame
        channel = tf.cast(spread, x.dtype)[:, None, None, None]
        channel = tf.broadcast_to(channel, tf.concat([shape[:3], [1]], 0))
        return tf.concat([x, channel], -1)

    def compute_output_shape(self, input_shape):  # noqa: ANN001, ANN201
        return tf.TensorShape(input_shape)[:-1].concatenate([input_shape[-1] + 1])

    def get_config(self) -> dict:
        return {**super().get_config(), "group_size": self.group_size}


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


# --- convolutions whose input gradient runs as a forward convolution -----------------------------
@tf.custom_gradient
def forward_gradient_conv(x: tf.Tensor, kernel: tf.Tensor):  # noqa: ANN201 - (output, gradient function)
    """A stride-1 SAME convolution with an odd kernel, whose input gradient is a forward convolution.

    TF 2.15's CPU kernel for Conv2DBackpropInput is slow: 249 ms for Xception's block14
    pointwise layer (3x3 maps, 1536 → 2048 channels, batch 16) and 97 ms for G's last 3x3
    layer at 128 px (24 → 1), where the same FLOPs as a forward convolution take 35 ms and
    19 ms (measured on this project's 2 cores). For stride 1 and SAME padding with an odd
    kernel, ∂L/∂x is exactly the convolution of ∂L/∂y with the kernel flipped in space and
    transposed in channels, so it runs as that. ∂L/∂W: a matrix product for 1x1 kernels, TF's
    own kernel otherwise (pruned when W is frozen).
    """
    y = tf.nn.conv2d(x, kernel, 1, "SAME")
    kh, kw, cin, cout = kernel.shape
    pointwise = (kh, kw) == (1, 1)

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        flipped = kernel if pointwise else tf.reverse(kernel, [0, 1])
        dx = tf.nn.conv2d(dy, tf.transpose(flipped, [0, 1, 3, 2]), 1, "SAME")
        if pointwise:
            dk = tf.matmul(tf.reshape(x, [-1, cin]), tf.reshape(dy, [-1, cout]), transpose_a=True)
            dk = tf.reshape(dk, tf.shape(kernel))
        else:
            dk = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                                 strides=[1, 1, 1, 1], padding="SAME")
        return dx, dk

    return y, grad


def _covered(kernel_size: tuple[int, int], strides: tuple[int, int], padding: str) -> bool:
    """Convolutions `forward_gradient_conv` computes: 1x1 with any stride and padding (a strided
    1x1 convolution reads every s-th pixel from the first), or odd kernels, stride 1, SAME."""
    if tuple(kernel_size) == (1, 1):
        return padding in ("same", "valid")
    odd = all(k % 2 == 1 for k in kernel_size)
    return odd and tuple(strides) == (1, 1) and padding == "same"


@tf.keras.saving.register_keras_serializable(package="medsynth")
class ForwardGradientConv2D(tf.keras.layers.Conv2D):
    """Conv2D computed by `forward_gradient_conv` (same variables, same numbers)."""

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        if tuple(self.strides) != (1, 1):  # 1x1 only (see _covered)
            inputs = inputs[:, :: self.strides[0], :: self.strides[1], :]
        return forward_gradient_conv(inputs, tf.cast(kernel, inputs.dtype))


@tf.keras.saving.register_keras_serializable(package="medsynth")
class ForwardGradientSeparableConv2D(tf.keras.layers.SeparableConv2D):
    """SeparableConv2D whose pointwise half is `forward_gradient_conv` (what tf.nn.separable_conv2d does)."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = tf.nn.depthwise_conv2d(inputs, self.depthwise_kernel, (1, *self.strides, 1),
                                   self.padding.upper(), dilations=self.dilation_rate)
        x = forward_gradient_conv(x, tf.cast(self.pointwise_kernel, x.dtype))
        if self.use_bias:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


# Keras' layer → the one computed by `forward_gradient_conv` (same variables and config).
FORWARD_GRADIENT_LAYERS = {
    tf.keras.layers.Conv2D: ForwardGradientConv2D,
    tf.keras.layers.SeparableConv2D: ForwardGradientSeparableConv2D,
}


def use_forward_gradients(model: tf.keras.Model) -> int:
    """Switch `model`'s convolutions that `forward_gradient_conv` covers to it, in place.

    Returns how many layers changed. Their variables, names and checkpoints stay; only the
    classes change, as in `synchronize_batch_norm` (so it works on keras.applications networks).
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        fast = FORWARD_GRADIENT_LAYERS.get(type(layer))
        if fast is None or layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1):
            continue
        if fast is ForwardGradientConv2D and (
            layer.groups != 1 or not _covered(layer.kernel_size, layer.strides, layer.padding)
        ):
            continue
        layer.__class__ = fast
        changed += 1
    return changed
