"""Projected GAN as its authors run it: every departure an option, their values one switch away."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.discriminator import build_discriminator
from medsynth.train.config import LEGACY_SIGNATURE, RECIPES, TrainConfig
from medsynth.train.step import AdversarialStep, augment_uniforms, latent_batch

PG_OPTIONS = ("d_feature_size", "d_scale_mixing", "d_max_channels", "d_blocks", "d_passes", "beta_1",
              "beta_2", "adam_epsilon", "lr_d", "draws", "cutout", "g_ema_buffers")


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(data="d", out="o", backbone="efficientnet_lite0", d_head="projected", **kw)


def test_one_switch_gives_projected_gans_values_and_each_stays_settable():
    pg = _cfg(d_recipe="projected-gan")
    assert {k: getattr(pg, k) for k in PG_OPTIONS} == RECIPES["projected-gan"]
    assert (pg.d_feature_size, pg.beta_1, pg.beta_2, pg.adam_epsilon, pg.lr_d, pg.cutout) == (
        224, 0.0, 0.99, 1e-8, 2e-4, 0.2)
    ours = _cfg()
    assert ours.d_recipe == "medsynth" and ours.lr_d == 5e-5 and ours.d_passes == "joint"
    mixed = _cfg(d_recipe="projected-gan", d_feature_size=128, draws="shared")
    assert (mixed.d_feature_size, mixed.draws, mixed.d_passes) == (128, "shared", "separate")
    # the flags and a job's argv carry them, resolved
    assert TrainConfig.from_argv(mixed.to_argv()) == mixed


@pytest.mark.parametrize("kw, match", [
    ({"d_recipe": "stylegan"}, "unknown --d-recipe 'stylegan'"),
    ({"d_scale_mixing": "fpn"}, "unknown --d-scale-mixing 'fpn'"),
    ({"d_passes": "twice"}, "unknown --d-passes"),
    ({"d_blocks": "dense"}, "unknown --d-blocks 'dense'"),
    ({"draws": "new"}, "unknown --draws"),
    ({"g_ema_buffers": "keep"}, "unknown --g-ema-buffers"),
    ({"cutout": 0.0}, "--cutout must be"),
    ({"beta_2": 1.0}, "--beta-1 and --beta-2"),
    ({"adam_epsilon": 0.0}, "--adam-epsilon"),
    ({"d_feature_size": 16}, "--d-feature-size"),
])
def test_bad_values_are_refused_naming_the_flag(kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(**kw)


def test_the_structural_options_are_in_the_model_signature_and_old_runs_read_as_before():
    assert _cfg().model_signature()["d_feature_size"] == 0
    pg = _cfg(d_recipe="projected-gan").model_signature()
    assert (pg["d_feature_size"], pg["d_scale_mixing"], pg["d_max_channels"]) == (224, "projected-gan", 512)
    assert _cfg(d_blocks="separable").model_signature()["d_blocks"] == "separable" != pg["d_blocks"]
    saved = {k: v for k, v in _cfg(d_recipe="projected-gan").to_dict().items() if k not in LEGACY_SIGNATURE}
    old = TrainConfig.from_saved(saved)  # a run written before the options existed: the D it trained
    assert {k: getattr(old, k) for k in LEGACY_SIGNATURE} == LEGACY_SIGNATURE


def _projected(mixing: str, feature_size: int = 0, max_channels: int = 256, blocks: str = "conv",
               size: int = 32) -> tf.keras.Model:
    return build_discriminator(size, "efficientnet_lite0", weights="none", head="projected", seed=3,
                               feature_size=feature_size, scale_mixing=mixing, max_channels=max_channels,
                               blocks=blocks)


def test_separable_blocks_judge_the_same_patches_with_a_fraction_of_the_head():
    conv, sep = (_projected("projected-gan", max_channels=512, blocks=b, size=64)
                 for b in ("conv", "separable"))
    x = tf.random.uniform([2, 64, 64, 1], -1, 1, seed=1)
    assert conv(x).shape == sep(x).shape  # the same patches per scale, down to the same maps
    weights = [m.get_layer("d_head").count_params() for m in (conv, sep)]
    assert weights[1] < weights[0] / 3, weights
    head = sep.get_layer("d_head")
    assert head.get_layer("d0_down0_pool") and not any(
        isinstance(layer, tf.keras.layers.Conv2D) and layer.kernel_size == (4, 4) and layer.strides == (2, 2)
        for layer in head.layers)


def test_spectral_depthwise_kernel_is_divided_by_its_largest_singular_value():
    from medsynth.models.layers import SpectralDepthwiseConv2D

    layer = SpectralDepthwiseConv2D(3, padding="same", use_bias=False)
    x = tf.random.normal([1, 6, 6, 5], seed=2)
    for _ in range(30):  # power iteration converges in training calls
        layer(x, training=True)
    k = layer.depthwise_kernel.numpy()
    sigma = np.linalg.svd(k.reshape(9, 5), compute_uv=False)[0]  # PyTorch's [C, 1, 3, 3] as a matrix
    expect = tf.nn.depthwise_conv2d(x, k / sigma, (1, 1, 1, 1), "SAME")
    np.testing.assert_allclose(layer(x, training=False), expect, rtol=1e-4, atol=1e-5)


def test_projected_gans_scale_mixing_adds_upsamples_with_aligned_corners_and_has_random_biases():
    theirs, ours = _projected("projected-gan"), _projected("residual")
    features = theirs.get_layer("d_features")
    names = {layer.name for layer in features.layers}
    assert not any("refine" in n or "skip" in n for n in names)  # no residual units
    assert any("refine" in layer.name for layer in ours.get_layer("d_features").layers)
    ccm = features.get_layer("ccm0")
    assert ccm.use_bias and np.abs(ccm.bias.numpy()).max() > 0 and not ccm.trainable
    assert not ours.get_layer("d_features").get_layer("ccm0").use_bias
    up = features.get_layer("csm3_up")
    x = tf.reshape(tf.range(4.0), [1, 2, 2, 1])
    y = up(x).numpy()[0, :, :, 0]
    assert y.shape == (4, 4) and y[0, 0] == 0 and y[-1, -1] == 3 and y[0, -1] == 1  # corners kept
    np.testing.assert_allclose(y[0], [0, 1 / 3, 2 / 3, 1], atol=1e-6)


def test_feature_size_resizes_frames_before_the_backbone_and_sizes_the_patches():
    small, large = _projected("residual"), _projected("projected-gan", 224, 512)
    assert small.get_layer("d_features").layers[1].size == 64  # the frame size, at least Lite0's minimum
    assert large.get_layer("d_features").layers[1].size == 224
    x = tf.zeros([2, 32, 32, 1])
    # at 224 px the four scales end on 7x7 maps: Projected GAN's valid 4x4 logits, 16 patches each
    assert large(x, training=False).shape == (2, 4 * 16)
    def widest(d: tf.keras.Model) -> int:  # the per-scale blocks' widths, read at their batch norms
        return max(layer.output_shape[-1] for layer in d.get_layer("d_head").layers
                   if layer.name.endswith("_bn") and "_down" in layer.name)

    assert (widest(large), widest(small)) == (512, 256)
    # as interp224: only a smaller frame is upsampled; a larger one keeps its own size
    larger = build_discriminator(128, "efficientnet_lite0", weights="none", head="projected", seed=3,
                                 feature_size=64)
    assert larger.get_layer("d_features").layers[1].size == 128


def _step(separate: bool = False, fresh: bool = False, r1_gamma: float = 0.0,
          d: tf.keras.Model | None = None, size: int = 32):
    from medsynth.models.generator import build_generator
    from medsynth.train.augment import DEFAULT_POLICY, parse_policy

    tf.keras.utils.set_random_seed(0)
    g = build_generator(size, latent_dim=16, width=2)
    d = d or _projected("residual")
    step = AdversarialStep(g, d, tf.keras.optimizers.Adam(1e-3), tf.keras.optimizers.Adam(1e-3),
                           global_batch_size=4, latent_dim=16, seed=3, augment=parse_policy(DEFAULT_POLICY),
                           loss="hinge", separate_passes=separate, fresh_draws=fresh, r1_gamma=r1_gamma)
    return g, d, step


def test_separate_passes_give_d_batch_statistics_of_one_kind():
    from medsynth.train.augment import DEFAULT_POLICY, diff_augment, parse_policy
    from medsynth.train.loss import discriminator_loss

    g, d, step = _step(separate=True)
    features, head = d.get_layer("d_features"), d.get_layer("d_head")
    real = tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(5, tf.int64)
    u = augment_uniforms(3, s, 0, 4)[0]
    policy = parse_policy(DEFAULT_POLICY)
    fake = g(latent_batch(3, s, 0, 4, 16), training=True)
    f_real = features(diff_augment(real, u[:4], policy), training=True)
    f_fake = features(diff_augment(fake, u[4:], policy), training=True)
    saved = head.get_weights()
    separate = float(discriminator_loss(head(f_real, training=True), head(f_fake, training=True), 4,
                                        loss="hinge"))
    head.set_weights(saved)
    both = head([tf.concat([r, f], 0) for r, f in zip(f_real, f_fake, strict=True)], training=True)
    joint = float(discriminator_loss(both[:4], both[4:], 4, loss="hinge"))
    head.set_weights(saved)
    assert abs(separate - joint) > 1e-4
    assert float(step.train_step(real, s)["d_loss"]) == pytest.approx(separate, rel=1e-4)


def test_fresh_draws_train_g_on_its_own_latents():
    """With fresh draws the step is D's update on stream 0's draws then G's on stream 1's: the same
    numbers as the two single updates in turn; the shared step's G update is not."""
    real = tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(5, tf.int64)
    g1, _, fresh = _step(fresh=True)
    fresh.train_step(real, s)
    g2, _, apart = _step()
    apart.d_step(real, s)
    apart.g_step(real, s)
    g3, _, shared = _step()
    shared.train_step(real, s)
    for a, b in zip(g1.trainable_variables, g2.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(a.numpy(), c.numpy(), atol=1e-6)
               for a, c in zip(g1.trainable_variables, g3.trainable_variables, strict=True))


def test_the_average_copies_batch_norm_statistics_when_asked():
    from medsynth.train.ema import GeneratorAverage

    def tiny() -> tf.keras.Model:
        x = tf.keras.Input((3,))
        return tf.keras.Model(x, tf.keras.layers.BatchNormalization()(tf.keras.layers.Dense(2)(x)))

    g, avg = tiny(), tiny()
    ema = GeneratorAverage(g, avg, batch_size=16, kimg=5.0, copy_buffers=True)
    for w in g.weights:
        w.assign(w + 1.0)
    ema.update(1000)
    for a, w in zip(avg.weights, g.weights, strict=True):
        if w.trainable:
            assert not np.allclose(a.numpy(), w.numpy())  # averaged
        else:
            np.testing.assert_array_equal(a.numpy(), w.numpy())  # moving statistics: G's own


def test_cutout_side_is_a_share_of_the_frame():
    from medsynth.train.augment import diff_augment

    x = tf.ones([1, 20, 20, 1])
    u = tf.constant([[0, 0, 0, 0, 0.5, 0.5]], tf.float32)
    assert int(tf.reduce_sum(1 - diff_augment(x, u, ("cutout",), cutout=0.2))) == 4 * 4
    assert int(tf.reduce_sum(1 - diff_augment(x, u, ("cutout",)))) == 10 * 10  # DiffAugment's half


def test_g_update_on_separate_passes_judges_only_the_generated_frames_as_d_whole_does():
    """Fresh draws and separate passes on a frozen backbone: G's update runs the frozen features on its
    generated frames only, and its loss is D's, run whole, on them."""
    g, d, step = _step(separate=True, fresh=True)
    real = tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(5, tf.int64)
    u = augment_uniforms(3, s, 1, 4)[1]
    saved = [v.numpy() for v in d.variables]  # spectral norm's power iteration moves its vectors
    fake = g(latent_batch(3, s, 1, 4, 16), training=True)
    with tf.GradientTape() as tape:
        frozen = step._frozen(real, fake, None, u, tape, with_real=False)
    assert frozen.real is None
    split = float(step._g_loss(real, fake, u, None, frozen))
    for v, value in zip(d.variables, saved, strict=True):
        v.assign(value)
    whole = float(step._g_loss(real, fake, u, None))
    assert split == pytest.approx(whole, rel=1e-4)


def test_fresh_draws_keep_r1_on_a_frozen_backbone():
    """R1 needs D's input gradient at the real frames: with it on, D's fresh-draw update runs D whole
    (the frozen features' shortcut would drop the penalty). The paper's head at Lite0's own size: TF has
    no second derivative of bilinear resizing, which the projected head and smaller frames use."""
    real = tf.random.stateless_uniform([4, 64, 64, 1], seed=[1, 2], minval=-1, maxval=1)
    paper = build_discriminator(64, "efficientnet_lite0", weights="none", head="paper", mode="frozen")
    _, _, step = _step(separate=True, fresh=True, r1_gamma=1.0, d=paper, size=64)
    assert step._split is not None  # a frozen backbone: the shortcut was on offer
    assert float(step.d_step(real, tf.constant(5, tf.int64))["r1_penalty"]) > 0


def test_r1_is_refused_in_one_line_where_d_resizes_the_frames_bilinearly():
    """TF has no second derivative of bilinear resizing (the reason for the refusal: if a TF version adds
    one, this test says so), so R1 on the projected head would fail deep inside the first step."""
    from types import SimpleNamespace

    from tensorflow.python.framework import ops  # where tf.function looks gradients up

    from medsynth.models.discriminator import bilinear_resizes
    from medsynth.train.loop import adversarial_step

    with pytest.raises(LookupError):  # what R1 on the projected head met inside its first step
        ops.gradient_registry.lookup("ResizeBilinearGrad")

    projected = _projected("projected-gan")
    assert any(n.startswith("csm") for n in bilinear_resizes(projected))
    paper = build_discriminator(64, "efficientnet_lite0", weights="none", head="paper", mode="frozen")
    assert bilinear_resizes(paper) == []  # Lite0 takes 64 px frames as they are: R1 works (test above)
    cfg = _cfg(r1_gamma=1.0)
    with pytest.raises(ConfigError, match=r"--r1-gamma 1.0: .*bilinear resizing.*csm"):
        adversarial_step(cfg, None, SimpleNamespace(discriminator=projected), xla=False)
