"""DiffAugment of D's inputs: each transformation does what it says, differentiably, and the step
feeds D augmented real and generated frames with numbers that do not depend on the replicas."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.train.augment import UNIFORMS, diff_augment, parse_policy
from medsynth.train.loss import discriminator_loss
from medsynth.train.step import AdversarialStep, augment_uniforms, latent_batch

S = 16


def _frames(n: int = 3) -> tf.Tensor:
    return tf.random.stateless_uniform([n, S, S, 1], seed=[4, 2], minval=0.1, maxval=1.0)


def _u(rows: list[list[float]]) -> tf.Tensor:
    return tf.constant(rows, tf.float32)


def test_policy_names_and_bad_names():
    assert parse_policy("none") == () and parse_policy("") == ()
    assert parse_policy(" Translation, cutout ") == ("translation", "cutout")
    with pytest.raises(ConfigError, match="'rotate'.*brightness, contrast, translation, cutout"):
        parse_policy("translation,rotate")


def test_translation_shifts_whole_pixels_and_fills_with_zero():
    x = _frames(1)
    shift = round(S / 8)  # 2 pixels either way at 16 px
    for uy, ux in ((0.0, 0.999), (0.5, 0.5), (0.999, 0.3)):
        dy = min(int(uy * (2 * shift + 1)), 2 * shift) - shift
        dx = min(int(ux * (2 * shift + 1)), 2 * shift) - shift
        y = diff_augment(x, _u([[0, 0, uy, ux, 0, 0]]), ("translation",)).numpy()[0, :, :, 0]
        expected = np.zeros((S, S), np.float32)
        src = x.numpy()[0, :, :, 0]
        for r in range(S):
            for c in range(S):
                if 0 <= r - dy < S and 0 <= c - dx < S:
                    expected[r, c] = src[r - dy, c - dx]
        np.testing.assert_array_equal(y, expected)
    assert dy != 0 or dx != 0


def test_cutout_zeroes_one_square_of_half_the_side():
    x = _frames(2)
    y = diff_augment(x, _u([[0, 0, 0, 0, 0.5, 0.5], [0, 0, 0, 0, 0.0, 0.99]]), ("cutout",)).numpy()
    zero = y[..., 0] == 0
    # centred: a full 8x8 square at rows/columns 4..11; at a corner it is clipped by the frame
    assert zero[0].sum() == (S // 2) ** 2 and zero[0, 4:12, 4:12].all()
    assert zero[1].sum() == (S // 4) * (S // 4 + 1) and zero[1, 0, -1] and not zero[1, -1, 0]
    np.testing.assert_array_equal(y[~zero], x.numpy()[~zero])


def test_brightness_and_contrast():
    x = _frames(2)
    u = _u([[0.9, 0, 0, 0, 0, 0], [0.1, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(diff_augment(x, u, ("brightness",)), x + [[[[0.4]]], [[[-0.4]]]], atol=1e-6)
    u = _u([[0, 1.0, 0, 0, 0, 0], [0, 0.0, 0, 0, 0, 0]])
    y = diff_augment(x, u, ("contrast",)).numpy()
    xs = x.numpy()
    for i, factor in enumerate((1.5, 0.5)):
        np.testing.assert_allclose(y[i].std(), factor * xs[i].std(), rtol=1e-4)
        np.testing.assert_allclose(y[i].mean(), xs[i].mean(), atol=1e-5)


def test_gradients_flow_to_the_frames_that_stay_visible():
    x = _frames(1)
    u = _u([[0.7, 0.8, 0.2, 0.6, 0.3, 0.4]])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = diff_augment(x, u, parse_policy("brightness,contrast,translation,cutout"))
        total = tf.reduce_sum(y * y)
    grad = tape.gradient(total, x).numpy()
    assert np.isfinite(grad).all() and np.count_nonzero(grad) > S * S // 2
    assert diff_augment(x, u, ()) is x  # off: D sees the frames themselves


def test_the_step_feeds_d_augmented_real_and_generated_frames():
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    tf.keras.utils.set_random_seed(0)
    g = build_generator(32, latent_dim=16, width=2)
    d = build_discriminator(32, backbone="convnet", weights="none")
    policy = parse_policy("translation,cutout")
    step = AdversarialStep(g, d, tf.keras.optimizers.Adam(1e-3), tf.keras.optimizers.Adam(1e-3),
                           global_batch_size=4, latent_dim=16, seed=3, augment=policy)
    real = tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(5, tf.int64)
    u = augment_uniforms(3, s, 0, 4)
    assert u.shape == (2, 8, UNIFORMS) and augment_uniforms(3, s, 0, 4, on=False).shape == (2, 8, 0)
    frames = tf.concat([real, g(latent_batch(3, s, 0, 4, 16), training=True)], 0)
    logits = d(diff_augment(frames, u[0], policy), training=True)
    expected = float(discriminator_loss(logits[:4], logits[4:], 4))
    plain = d(frames, training=True)
    assert abs(expected - float(discriminator_loss(plain[:4], plain[4:], 4))) > 1e-4
    assert float(step.d_step(real, s)["d_loss"]) == pytest.approx(expected, rel=1e-5)


def test_xla_compiles_it_to_the_same_frames():
    # GPUs run the step XLA-compiled (--xla auto): every op here must compile, with the same result
    x = _frames(4)
    u = tf.random.stateless_uniform([4, UNIFORMS], seed=[7, 7])
    policy = parse_policy("brightness,contrast,translation,cutout")
    compiled = tf.function(lambda a, b: diff_augment(a, b, policy), jit_compile=True)
    np.testing.assert_allclose(compiled(x, u), diff_augment(x, u, policy), atol=1e-6)
