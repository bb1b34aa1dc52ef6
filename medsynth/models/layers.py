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


def normalization(kind: str, name: str | None = None, momentum: float = 0.99) -> tf.keras.layers.Layer:
    """A fresh normalisation layer of `kind` ("batch", "instance" or "group").

    "batch" is synchronised: under MirroredStrategy its statistics are those of
    the global batch, so a multi-GPU step equals a one-device step (DESIGN.md §3).
    `momentum`: batch norm's, Keras' convention (PyTorch's momentum m is Keras' 1 - m).
    """
    kind = str(kind).lower()
    if kind == "batch":
        return tf.keras.layers.BatchNormalization(synchronized=True, momentum=momentum, name=name)
    if kind == "instance":
        return tfa.layers.InstanceNormalization(name=name)
    if kind == "group":
        return AdaptiveGroupNormalization(groups=GROUPS, name=name)
    raise ConfigError(f"unknown normalisation {kind!r}; use one of: {', '.join(NORMALIZATIONS)}")


def spectral_norm(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer:
    """Wrap a Conv/Dense layer so its kernel is divided by its largest singular value (Miyato et al. 2018).

    TF Addons' wrapper: in training calls it overwrites the kernel variable with kernel / σ, so no
    gradient flows through σ (the SpectralConv2D / SpectralDense below are PyTorch's semantics)."""
    return tfa.layers.SpectralNormalization(layer)


# --- spectral normalisation as PyTorch's torch.nn.utils.spectral_norm computes it ----------------
def spectral_kernel(kernel: tf.Tensor, u: tf.Variable, training: bool) -> tf.Tensor:
    """`kernel` / σ, σ its largest singular value by one power iteration from `u` (Miyato et al. 2018).

    As torch.nn.utils.spectral_norm: the variable keeps the raw kernel, the gradient flows through σ
    (u and v held constant), and `u` advances in training calls only (so inference, and an exported
    model, are a function of the weights alone). The kernel is read as a matrix [-1, out channels];
    the result is float32 (under mixed precision the layer casts it to its compute dtype).
    """
    w = tf.cast(tf.reshape(kernel, [-1, kernel.shape[-1]]), tf.float32)
    v = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(u, w, transpose_b=True)))
    new_u = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(v, w)))
    sigma = tf.reduce_sum(tf.matmul(v, w) * new_u)
    if training:
        u.assign(new_u)
    return tf.cast(kernel, tf.float32) / sigma


class _SpectralKernel:
    """The power-iteration vector of a layer with a `kernel`: one per replica (SyncOnRead, like batch
    norm's statistics: every replica has the same kernel, so the same u), float32 under any policy."""

    def _add_u(self, channels: int | None = None) -> None:
        self.sn_u = self.add_weight(
            name="sn_u", shape=(1, channels or self.kernel.shape[-1]), dtype=tf.float32, trainable=False,
            initializer=tf.keras.initializers.RandomNormal(), experimental_autocast=False,
            synchronization=tf.VariableSynchronization.ON_READ, aggregation=tf.VariableAggregation.MEAN,
        )


@tf.keras.saving.register_keras_serializable(package="medsynth")
class SpectralConv2D(_SpectralKernel, tf.keras.layers.Conv2D):
    """Conv2D with a spectrally normalised kernel (`spectral_kernel`), channels last, no dilation or
    groups; its input gradient as a forward convolution where `forward_gradient_conv` covers it."""

    def build(self, input_shape: tf.TensorShape) -> None:
        super().build(input_shape)
        if self.data_format != "channels_last" or self.groups != 1 or tuple(self.dilation_rate) != (1, 1):
            raise ConfigError(f"{self.name}: SpectralConv2D is channels-last, without groups or dilation")
        self._add_u()

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        kernel = tf.cast(spectral_kernel(self.kernel, self.sn_u, bool(training)), self.compute_dtype)
        if _covered(self.kernel_size, self.strides, self.padding):
            x = ForwardGradientConv2D.convolution_op(self, inputs, kernel)
        else:
            x = self.convolution_op(inputs, kernel)
        if self.use_bias:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


@tf.keras.saving.register_keras_serializable(package="medsynth")
class SpectralDepthwiseConv2D(_SpectralKernel, tf.keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D (multiplier 1) with a spectrally normalised kernel, read as PyTorch reads a
    `groups=C` weight [C, 1, k, k]: a matrix [k·k, C], one column per output channel."""

    def build(self, input_shape: tf.TensorShape) -> None:
        super().build(input_shape)
        if self.data_format != "channels_last" or self.depth_multiplier != 1:
            raise ConfigError(f"{self.name}: SpectralDepthwiseConv2D is channels-last, multiplier 1")
        self._add_u(self.depthwise_kernel.shape[2])

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        k = self.depthwise_kernel
        matrix = tf.reshape(k, [-1, k.shape[2]])
        kernel = tf.reshape(spectral_kernel(matrix, self.sn_u, bool(training)), k.shape)
        x = tf.nn.depthwise_conv2d(inputs, tf.cast(kernel, self.compute_dtype), (1, *self.strides, 1),
                                   self.padding.upper())
        if self.use_bias:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


@tf.keras.saving.register_keras_serializable(package="medsynth")
class SpectralDense(_SpectralKernel, tf.keras.layers.Dense):
    """Dense on [n, features] with a spectrally normalised kernel (`spectral_kernel`)."""

    def build(self, input_shape: tf.TensorShape) -> None:
        super().build(input_shape)
        self._add_u()

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        kernel = spectral_kernel(self.kernel, self.sn_u, bool(training))
        x = tf.matmul(inputs, tf.cast(kernel, self.compute_dtype))
        if self.use_bias:
            x = tf.nn.bias_add(x, self.bias)
        return self.activation(x) if self.activation is not None else x


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


@tf.custom_gradient
def forward_gradient_depthwise(x: tf.Tensor, kernel: tf.Tensor):  # noqa: ANN201 - (output, gradient function)
    """A stride-1 SAME depthwise convolution (multiplier 1, odd kernel) whose input gradient is a
    forward depthwise convolution of ∂L/∂y with the kernel flipped in space (exact, as for
    `forward_gradient_conv`). TF 2.15's CPU DepthwiseConv2dNativeBackpropInput: 3.4 ms where the
    forward kernel takes 2.6 ms in fp32, and 9 ms vs 1 ms with bfloat16 convolutions, for
    [32, 32, 32, 64] 5x5 (AMD EPYC family 25, best of 15)."""
    y = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        dx = tf.nn.depthwise_conv2d(dy, tf.reverse(kernel, [0, 1]), [1, 1, 1, 1], "SAME")
        dk = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")
        return dx, dk

    return y, grad


@tf.keras.saving.register_keras_serializable(package="medsynth")
class ForwardGradientDepthwiseConv2D(tf.keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D computed by `forward_gradient_depthwise` (same variables, same numbers)."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        x = forward_gradient_depthwise(inputs, tf.cast(self.depthwise_kernel, inputs.dtype))
        if self.use_bias:
            x = tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))
        return self.activation(x) if self.activation is not None else x


# Keras' layer → the one computed by `forward_gradient_conv` (same variables and config).
FORWARD_GRADIENT_LAYERS = {
    tf.keras.layers.Conv2D: ForwardGradientConv2D,
    tf.keras.layers.SeparableConv2D: ForwardGradientSeparableConv2D,
}
# ... and by `forward_gradient_depthwise`, switched apart (it wins on other CPUs than the above)
FORWARD_GRADIENT_DEPTHWISE = {tf.keras.layers.DepthwiseConv2D: ForwardGradientDepthwiseConv2D}


def _forward_covered(layer: tf.keras.layers.Layer, fast: type) -> bool:
    if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1):
        return False
    if fast is ForwardGradientConv2D:
        return layer.groups == 1 and _covered(layer.kernel_size, layer.strides, layer.padding)
    if fast is ForwardGradientDepthwiseConv2D:
        odd = all(k % 2 == 1 for k in layer.kernel_size)
        stride_1 = tuple(layer.strides) == (1, 1) and layer.padding == "same"
        return odd and stride_1 and layer.depth_multiplier == 1
    return True


def use_forward_gradients(model: tf.keras.Model, convolutions: bool = True, depthwise: bool = False) -> int:
    """Switch `model`'s convolutions (and with `depthwise`, its depthwise convolutions) that the
    forward-gradient functions cover to them, in place; with `convolutions` False, switch the
    convolutions back to Keras' own.

    Returns how many layers changed. Their variables, names and checkpoints stay; only the
    classes change, as in `synchronize_batch_norm` (so it works on keras.applications networks).
    """
    table = {**(FORWARD_GRADIENT_LAYERS if convolutions else {}),
             **(FORWARD_GRADIENT_DEPTHWISE if depthwise else {})}
    if not convolutions:
        table.update({fast: keras for keras, fast in FORWARD_GRADIENT_LAYERS.items()})
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        new = table.get(type(layer))
        if new is None or not _forward_covered(layer, new):
            continue
        layer.__class__ = new
        changed += 1
    return changed


def use_stock_gradients(model: tf.keras.Model) -> int:
    """Undo `use_forward_gradients`, `use_channel_sums` and `use_upsampled_convolutions`: Keras' own
    convolution classes (and gradients) throughout."""
    stock = {fast: keras for keras, fast in {**FORWARD_GRADIENT_LAYERS, **FORWARD_GRADIENT_DEPTHWISE}.items()}
    stock.update({ChannelSumConv2D: tf.keras.layers.Conv2D, UpsampledConv2D: tf.keras.layers.Conv2D,
                  DeferredUpSampling2D: NearestUpSampling2D})
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) in stock:
            layer.__class__ = stock[type(layer)]
            changed += 1
    return changed


# --- convolutions to one channel as a depthwise convolution and a channel sum ----------------------
@tf.keras.saving.register_keras_serializable(package="medsynth")
class ChannelSumConv2D(tf.keras.layers.Conv2D):
    """A Conv2D to one output channel computed as a depthwise convolution and a sum over channels (same
    variables, same numbers up to rounding).

    oneDNN's convolution kernels are blocked by output channels and run a one-channel output at a
    few GFLOP/s: G's last layer (3x3, 48 → 1 at 64 px, batch 16) takes 10.5 ms forward and 23.6 ms
    forward and backward, as depthwise + sum 3.2 and 9.5 ms (AMD EPYC family 25, best of 10).
    """

    def convolution_op(self, inputs: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        kernel = tf.cast(kernel, inputs.dtype)  # [kh, kw, in, 1]: one depthwise filter per channel
        strides = (1, *self.strides, 1)
        padding = self.padding.upper()
        kh, kw = self.kernel_size
        odd = kh % 2 == 1 and kw % 2 == 1
        if odd and strides == (1, 1, 1, 1) and padding == "SAME" and self.forward_gradients:
            y = forward_gradient_depthwise(inputs, kernel)
        else:
            y = tf.nn.depthwise_conv2d(inputs, kernel, strides, padding)
        return tf.reduce_sum(y, axis=-1, keepdims=True)

    forward_gradients = True  # the depthwise input gradient as a forward convolution, where it covers


def use_channel_sums(model: tf.keras.Model, depthwise_forward_gradients: bool = True) -> int:
    """Switch `model`'s Conv2D layers to one output channel (channels last, no groups or dilation) to
    `ChannelSumConv2D`, in place; returns how many changed."""
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, tf.keras.layers.Conv2D) or type(layer) not in (
                tf.keras.layers.Conv2D, ForwardGradientConv2D):
            continue
        if layer.filters != 1 or layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1) or (
                layer.data_format != "channels_last"):
            continue
        layer.__class__ = ChannelSumConv2D
        layer.forward_gradients = depthwise_forward_gradients
        changed += 1
    return changed


# --- nearest x2 up-sampling and the convolution after it, as one transposed convolution ------------
# Nearest x2 then a 3-tap SAME correlation K is, per output parity, a 2-tap one on the input:
# out[2m] = K0 x[m-1] + (K1 + K2) x[m], out[2m+1] = (K0 + K1) x[m] + K2 x[m+1], i.e. a stride-2
# transposed convolution with the 4-tap kernel [K2, K1 + K2, K0 + K1, K0] = UPSAMPLED_TAPS @ K.
UPSAMPLED_TAPS = ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 1.0, 0.0), (1.0, 0.0, 0.0))


@tf.keras.saving.register_keras_serializable(package="medsynth")
class DeferredUpSampling2D(NearestUpSampling2D):
    """A NearestUpSampling2D whose one consumer, an `UpsampledConv2D`, up-samples: passes its input on."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs


@tf.keras.saving.register_keras_serializable(package="medsynth")
class UpsampledConv2D(tf.keras.layers.Conv2D):
    """Nearest x2 up-sampling of its input, then this Conv2D (3x3 or 1x1, stride 1, SAME), in one op
    with the same variables and the same numbers up to rounding: a 3x3 kernel as a stride-2 transposed
    convolution with the 4x4 kernel UPSAMPLED_TAPS·K·UPSAMPLED_TAPSᵀ (16 multiply-adds per input pixel
    and channel pair where up-sampling then convolving does 36), a 1x1 kernel before the up-sampling
    (4x fewer). The paper generator's `resize` layers, 64 px, batch 16, forward and backward: 1.5-1.9x
    faster at 8-32 px maps, even at 4 px (AMD EPYC family 25, fp32 and bf16).
    """

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        kernel = tf.cast(self.kernel, inputs.dtype)
        if tuple(self.kernel_size) == (1, 1):
            x = _nearest_upsample(tf.nn.conv2d(inputs, kernel, 1, "SAME"), 2, 2)
        else:
            taps = tf.constant(UPSAMPLED_TAPS, inputs.dtype)
            w4 = tf.einsum("us,vt,stio->uvoi", taps, taps, kernel)  # [4, 4, out, in]: transposed layout
            _, h, w, _ = inputs.shape
            shape = tf.stack([tf.shape(inputs)[0], 2 * h, 2 * w, self.filters])
            x = tf.nn.conv2d_transpose(inputs, w4, shape, 2, "SAME")
        if self.use_bias:
            x = tf.nn.bias_add(x, tf.cast(self.bias, x.dtype))
        return self.activation(x) if self.activation is not None else x


def _upsampled_pair(layer: tf.keras.layers.Layer) -> tf.keras.layers.Layer | None:
    """The Conv2D that is the one consumer of the nearest x2 `layer`, when `UpsampledConv2D` covers it."""
    if type(layer) is not NearestUpSampling2D or tuple(layer.size) != (2, 2):
        return None
    if len(layer.outbound_nodes) != 1:
        return None
    conv = layer.outbound_nodes[0].layer
    if type(conv) not in (tf.keras.layers.Conv2D, ForwardGradientConv2D) or len(conv.inbound_nodes) != 1:
        return None
    plain = conv.groups == 1 and tuple(conv.dilation_rate) == (1, 1) and tuple(conv.strides) == (1, 1)
    shape = tuple(conv.kernel_size) in ((1, 1), (3, 3)) and conv.padding == "same"
    return conv if plain and shape and conv.data_format == "channels_last" else None


def use_upsampled_convolutions(model: tf.keras.Model) -> int:
    """Switch every nearest x2 up-sampling of `model` that feeds one 3x3 or 1x1 convolution, and that
    convolution, to `DeferredUpSampling2D` + `UpsampledConv2D`, in place; returns how many pairs."""
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        conv = _upsampled_pair(layer)
        if conv is not None:
            layer.__class__, conv.__class__ = DeferredUpSampling2D, UpsampledConv2D
            changed += 1
    return changed


# --- convolutions in bfloat16, everything else in float32 ----------------------------------------
WEIGHTED = (tf.keras.layers.Conv2D, tf.keras.layers.SeparableConv2D, tf.keras.layers.Dense)


def bfloat16_convolutions(model: tf.keras.Model) -> int:
    """Keep bfloat16 compute for the convolutions and dense layers of `model`, built under Keras'
    mixed_bfloat16 policy (float32 variables), and switch every other layer back to float32, in
    place; returns how many layers were switched.

    The whole policy also runs batch norm, activations and their gradients in bfloat16, which TF
    2.15's Eigen kernels do several times slower than in float32 on a CPU (LeakyReluGrad: 259 vs
    36 ms per step of the demo), while oneDNN's bf16 convolutions run about twice as fast as fp32 on
    CPUs with AVX512_BF16. Depthwise convolutions (and `ChannelSumConv2D`) stay float32 too: their
    bf16 input gradient ran 4-9x slower than fp32 on Zen 4. Each layer casts its inputs to its own
    compute dtype (Keras' autocast).
    """
    policy = tf.keras.mixed_precision.Policy("float32")
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        depthwise = isinstance(layer, (tf.keras.layers.DepthwiseConv2D, ChannelSumConv2D))
        if (depthwise or not isinstance(layer, WEIGHTED)) and layer.compute_dtype == "bfloat16":
            layer._set_dtype_policy(policy)
            changed += 1
    return changed
