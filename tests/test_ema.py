"""G's moving average: StyleGAN2-ADA's schedule, the lerp, and that runs sample, judge and ship it."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import CheckpointError, ConfigError
from medsynth.train.config import TrainConfig
from medsynth.train.ema import GeneratorAverage, default_kimg, ema_beta


def test_half_life_ramps_up_with_the_images_seen_then_stays_at_kimg():
    # step 100, batch 16: 1,600 images seen, half-life min(5,000, 80) images -> beta = 0.5 ** (16 / 80)
    assert float(ema_beta(100, 16, 5.0)) == pytest.approx(0.5 ** (16 / 80), rel=1e-6)
    # step 100,000: 1.6M images seen, the half-life is capped at kimg
    assert float(ema_beta(100_000, 16, 5.0)) == pytest.approx(0.5 ** (16 / 5000), rel=1e-6)
    assert float(ema_beta(1, 16, 5.0)) < 1e-5  # the first updates all but replace the average
    assert float(ema_beta(10, 16, 5.0, rampup=0)) == pytest.approx(0.5 ** (16 / 5000), rel=1e-6)
    assert default_kimg(32) == 10 and default_kimg(16) == 5


def _tiny() -> tf.keras.Model:
    x = tf.keras.Input((3,))
    return tf.keras.Model(x, tf.keras.layers.BatchNormalization()(tf.keras.layers.Dense(2)(x)))


def test_every_weight_moves_toward_g_by_one_minus_beta():
    g, avg = _tiny(), _tiny()
    ema = GeneratorAverage(g, avg, batch_size=16, kimg=5.0)
    for a, w in zip(avg.weights, g.weights, strict=True):  # starts as a copy of G
        np.testing.assert_array_equal(a.numpy(), w.numpy())
    old = [a.numpy() for a in avg.weights]
    for w in g.weights:  # moving statistics too
        w.assign(w + 1.0)
    ema.update(1000)
    beta = float(ema_beta(1000, 16, 5.0))
    assert 0.5 < beta < 1
    for a, o, w in zip(avg.weights, old, g.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), w.numpy() + beta * (o - w.numpy()), rtol=1e-6, atol=1e-7)
        assert not np.allclose(a.numpy(), w.numpy())


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(data="builtin://phantom", out=str(tmp_path / "runs" / "r" / "a"), image_size=32, steps=4,
                batch_size=4, seed=7, checkpoint_every=2, backbone="mobilenet", backbone_weights="none",
                latent_dim=16, generator_width=2, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _values(model: tf.keras.Model) -> list[np.ndarray]:
    return [v.numpy() for v in model.weights]


@pytest.mark.slow
def test_a_run_checkpoints_samples_and_ships_the_average_not_g(tmp_path):
    from medsynth.train.checkpoints import load_generator
    from medsynth.train.loop import train

    result = train(_cfg(tmp_path))
    assert result.sampled is not result.generator
    prefix = str(result.run_dir / "checkpoints" / "ckpt-4")
    names = {n.split("/", 1)[0] for n, _ in tf.train.list_variables(prefix)}
    assert {"generator", "generator_ema"} <= names
    loaded, info = load_generator(result.run_dir)
    assert info["weights"] == "generator_ema"
    for x, y in zip(_values(loaded), _values(result.sampled), strict=True):
        np.testing.assert_array_equal(x, y)
    pairs = zip(_values(loaded), _values(result.generator), strict=True)
    assert any(not np.array_equal(x, y) for x, y in pairs)

    off = train(_cfg(tmp_path, out=str(tmp_path / "runs" / "r" / "off"), g_ema_kimg=0))
    assert off.sampled is off.generator
    loaded, info = load_generator(off.run_dir)
    assert info["weights"] == "generator"
    for x, y in zip(_values(loaded), _values(off.generator), strict=True):
        np.testing.assert_array_equal(x, y)
    # a run trained without the average is not resumed with one (its checkpoint has none)
    with pytest.raises(CheckpointError, match="g_ema"):
        train(_cfg(tmp_path, out=str(tmp_path / "runs" / "r" / "off"), steps=6))


def test_negative_half_life_is_refused_with_the_flag_named(tmp_path):
    with pytest.raises(ConfigError, match="--g-ema-kimg"):
        _cfg(tmp_path, g_ema_kimg=-1.0)
