"""The step's fast path computes what the plain networks compute (medsynth.train.fastpath).

Speed is bench/train_step.py's; here only numbers and rules."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medsynth.models.folding import fold_batch_norm
from medsynth.models.layers import (
    ChannelSumConv2D,
    forward_gradient_depthwise,
    use_channel_sums,
    use_stock_gradients,
)
from medsynth.train import fastpath
from medsynth.train.fastpath import FastPath


def _randomise_batch_norm(model: tf.keras.Model, seed: int = 0) -> int:
    """ImageNet-like BN statistics, so that folding has something to fold."""
    rng = np.random.default_rng(seed)
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            c = layer.weights[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.2, 2.0, c)])
            n += 1
    return n


@pytest.mark.parametrize("mixing", ["residual", "projected-gan"])
def test_folded_frozen_features_give_the_discriminators_logits(mixing):
    """fp32: D's head on the folded Lite0 features = D's logits, to 1e-4 (medsynth's scale mixing, and
    Projected GAN's, which the demo's candidate trains)."""
    from medsynth.models.discriminator import build_discriminator
    from medsynth.train.step import split_frozen_discriminator

    tf.keras.utils.set_random_seed(0)
    d = build_discriminator(64, backbone="efficientnet_lite0", weights="none", head="projected",
                            scale_mixing=mixing, max_channels=512 if mixing == "projected-gan" else 256)
    features, head = split_frozen_discriminator(d)
    assert _randomise_batch_norm(features) > 40
    folded, pairs = fold_batch_norm(features)
    assert pairs == 48  # stem and every block's convolutions up to the last tapped stage
    assert not folded.trainable_variables
    assert not any(isinstance(x, tf.keras.layers.BatchNormalization)
                   for x in folded._flatten_layers(include_self=False, recursive=True))
    frames = tf.random.stateless_uniform([4, 64, 64, 1], seed=[3, 4], minval=-1, maxval=1)
    # the head in inference mode: in training mode the batch statistics of 4 frames amplify the
    # features' rounding differences (1e-6) in channels that hardly vary across the batch
    expected = d(frames, training=False)
    got = head(folded(frames, training=True), training=False)
    assert float(tf.reduce_max(tf.abs(expected))) > 0.05  # logits worth comparing
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-4)
    # and G's gradient through them, which is what the step takes from the folded copy
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(frames)
        a, b = tf.reduce_sum(d(frames, training=False)), tf.reduce_sum(head(folded(frames), training=False))
    np.testing.assert_allclose(tape.gradient(b, frames).numpy(), tape.gradient(a, frames).numpy(),
                               rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("kernel", [3, 5])
def test_depthwise_forward_gradient_is_tfs_gradient(kernel):
    x = tf.random.stateless_normal([2, 9, 7, 6], seed=[1, kernel])
    k = tf.random.stateless_normal([kernel, kernel, 6, 1], seed=[2, kernel])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, k])
        w = tf.range(1.0, 7.0)
        ours = tf.reduce_sum(forward_gradient_depthwise(x, k) * w)
        tfs = tf.reduce_sum(tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME") * w)
    for a, b in zip(tape.gradient(ours, [x, k]), tape.gradient(tfs, [x, k]), strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, "same"), (4, 1, "valid"), (4, 2, "same")])
def test_channel_sum_convolution_is_the_convolution(kernel, stride, padding):
    inputs = tf.keras.Input([12, 12, 5])
    conv = tf.keras.layers.Conv2D(1, kernel, stride, padding, activation="tanh")
    model = tf.keras.Model(inputs, conv(inputs))
    x = tf.random.stateless_normal([3, 12, 12, 5], seed=[5, kernel])

    def run() -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(y * tf.range(1.0, 1.0 + y.shape[1])[None, :, None, None])
        return [y.numpy(), *(g.numpy() for g in tape.gradient(loss, [x, *model.trainable_variables]))]

    plain = run()
    assert use_channel_sums(model) == 1 and isinstance(model.layers[1], ChannelSumConv2D)
    for a, b in zip(run(), plain, strict=True):
        # float32 sums in another order: within 1e-6 of the largest value (Eigen on an AVX2 Zen 3 is
        # 3.6e-7 off in the kernel's gradient, whose entries reach 140)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(b).max())))
    assert use_stock_gradients(model) == 1 and type(model.layers[1]) is tf.keras.layers.Conv2D


def test_bfloat16_convolutions_leave_the_rest_in_float32():
    from medsynth.models.generator import build_generator

    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        g = build_generator(32, latent_dim=8, width=2)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    fast = FastPath(channel_sums=True, bfloat16_convolutions=True)
    fast.apply(g)
    dtypes = {layer.name: layer.compute_dtype for layer in g.layers}
    assert dtypes["level1_conv"] == "bfloat16" and dtypes["level1_conv_norm"] == "float32"
    assert dtypes["level1_conv_lrelu"] == "float32" and dtypes["to_image"] == "float32"  # one channel
    assert all(w.dtype == tf.float32 for w in g.weights)  # variables stay float32 (checkpoints alike)
    assert g(tf.zeros([2, 8]), training=True).dtype == tf.float32


@pytest.mark.parametrize("flags, vendor, precision, onednn, bf16, forward", [
    # bf16 convolutions stay off: faster alone on Zen 4/5 and AMX, but the demo's FD ratio left fp32's
    # spread over seeds 0-2 (docs/performance.md)
    ({"avx2", "avx512f", "avx512_bf16"}, "AuthenticAMD", "auto", True, False, False),
    ({"avx2", "avx512f", "avx512_bf16"}, "GenuineIntel", "auto", True, False, False),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "GenuineIntel", "auto", True, False, False),
    ({"avx2", "avx512f", "avx512_bf16"}, "AuthenticAMD", "off", True, False, False),  # asked: fp32
    ({"avx2", "avx512f"}, "GenuineIntel", "auto", False, False, False),  # AVX-512, Eigen's kernels
    ({"avx2", "fma"}, "AuthenticAMD", "auto", False, False, True),  # AVX2, Eigen: forward gradients
    ({"avx2", "fma"}, "AuthenticAMD", "auto", True, False, False),  # AVX2 under oneDNN: its own
])
def test_the_rules_pick_per_cpu(monkeypatch, caplog, flags, vendor, precision, onednn, bf16, forward):
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: flags)
    monkeypatch.setattr(fastpath, "cpu_vendor", lambda: vendor)
    with caplog.at_level("INFO", logger="medsynth"):
        fast = fastpath.choose(precision, None, onednn=onednn)
    assert (fast.bfloat16_convolutions, fast.forward_gradients) == (bf16, forward)
    assert fast.fold_batch_norm and fast.depthwise_forward_gradients and fast.channel_sums
    assert fast.build_policy("float32") == ("mixed_bfloat16" if bf16 else "float32")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fast path:")]
    assert len(lines) == 1 and vendor in lines[0]
    assert ("oneDNN" if onednn else "Eigen kernels") in lines[0]


def test_gpus_get_folding_only():
    fast = fastpath.choose("auto", (8, 0))
    assert fast.fold_batch_norm and not (fast.forward_gradients or fast.depthwise_forward_gradients
                                         or fast.channel_sums or fast.bfloat16_convolutions)


def test_upsampled_convolutions_are_the_generators_layers():
    """G's nearest x2 + 3x3 (and + 1x1) pairs as one op: same frames and gradients, same variables."""
    from medsynth.models.generator import build_generator
    from medsynth.models.layers import DeferredUpSampling2D, UpsampledConv2D, use_upsampled_convolutions

    tf.keras.utils.set_random_seed(1)
    g = build_generator(32, latent_dim=8, width=2, upsampling="resize")  # TrainConfig's default
    z = tf.random.stateless_normal([4, 8], seed=[7, 8])

    def run() -> list[np.ndarray]:
        with tf.GradientTape() as tape:
            frames = g(z, training=True)
            loss = tf.reduce_sum(frames * tf.range(1.0, 33.0)[None, :, None, None])
        return [frames.numpy(), *(x.numpy() for x in tape.gradient(loss, g.trainable_variables))]

    plain = run()
    levels = sum(1 for layer in g.layers if layer.name.endswith("_deconv1_resize"))
    assert levels == 3
    assert use_upsampled_convolutions(g) == 2 * levels  # deconv1 (3x3) and deconv2 (1x1) of each level
    assert isinstance(g.get_layer("level1_deconv1"), UpsampledConv2D)
    assert isinstance(g.get_layer("level1_deconv1_resize"), DeferredUpSampling2D)
    assert type(g.get_layer("level1_upsample")) is not DeferredUpSampling2D  # feeds a norm, not a conv
    fast = run()
    np.testing.assert_allclose(fast[0], plain[0], rtol=0, atol=1e-5)  # the frames
    for a, b in zip(fast[1:], plain[1:], strict=True):  # gradients: rounding, which BN of 4 frames amplifies
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max())
    assert use_stock_gradients(g) >= 2 * levels
