"""The adversarial step, the loop, checkpoints and resume, on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import CheckpointError, ConfigError
from medsynth.train.config import TrainConfig
from medsynth.train.loss import discriminator_loss, generator_loss
from medsynth.train.step import AdversarialStep, latent_batch
from medsynth.train.telemetry import read_history

SIZE = 32
BACKBONE = "mobilenet"  # trainable (weights none): the quickest backbone to trace


def _models(seed: int = 0):
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    tf.keras.utils.set_random_seed(seed)
    g = build_generator(SIZE, latent_dim=16, width=2)
    d = build_discriminator(SIZE, backbone=BACKBONE, weights="none")
    return g, d


def _step(g, d, batch=4, lr=1e-3):
    return AdversarialStep(
        g,
        d,
        tf.keras.optimizers.Adam(lr, beta_1=0.5),
        tf.keras.optimizers.Adam(lr, beta_1=0.5),
        global_batch_size=batch,
        latent_dim=16,
        seed=3,
    )


def _weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


def _changed(before, model):
    return any(
        not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables, strict=True)
    )


def test_losses_are_the_papers_bce():
    real, fake = tf.constant([[2.0], [-1.0]]), tf.constant([[0.5], [-3.0]])
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731 - softplus: BCE with logits
    d = float(discriminator_loss(real, fake, 2))
    expected_d = np.mean([sp(-2.0) + sp(0.5), sp(1.0) + sp(-3.0)])
    assert d == pytest.approx(expected_d, rel=1e-6)
    g = float(generator_loss(fake, 2))
    assert g == pytest.approx(np.mean([sp(-0.5), sp(3.0)]), rel=1e-6)
    # the global batch divides, so N replicas summing their losses give the single-device value
    assert float(generator_loss(fake, 4)) == pytest.approx(g / 2, rel=1e-6)


def test_latents_do_not_depend_on_replicas_and_differ_per_step():
    a = latent_batch(1, tf.constant(5, tf.int64), 0, 8, 4).numpy()
    b = latent_batch(1, tf.constant(5, tf.int64), 0, 8, 4).numpy()
    c = latent_batch(1, tf.constant(6, tf.int64), 0, 8, 4).numpy()
    d = latent_batch(1, tf.constant(5, tf.int64), 1, 8, 4).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, d)


def test_d_step_moves_only_d_and_lowers_its_loss_then_g_step_moves_only_g():
    g, d = _models()
    # 2e-4: at 1e-3 a learning MobileNet's BN on 1x1 maps (batch 8) makes G's loss jump from step
    # to step, and whether it ends lower after 5 steps depended on float rounding
    step = _step(g, d, lr=2e-4)
    real = tf.random.stateless_uniform([4, SIZE, SIZE, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(0, tf.int64)

    g0, d0 = _weights(g), _weights(d)
    first = step.d_step(real, s)
    assert _changed(d0, d) and not _changed(g0, g)
    losses = [float(first["d_loss"])] + [float(step.d_step(real, s)["d_loss"]) for _ in range(4)]
    assert losses[-1] < losses[0], losses  # same batch, same z: D gets better at telling them apart

    g1, d1 = _weights(g), _weights(d)
    first = step.g_step(real, s)
    assert _changed(g1, g) and not _changed(d1, d)
    losses = [float(first["g_loss"])] + [float(step.g_step(real, s)["g_loss"]) for _ in range(4)]
    assert losses[-1] < losses[0], losses  # G learns to fool the (fixed) D


def test_r1_penalty_is_half_gamma_times_the_squared_input_gradient_at_real_frames():
    g, d = _models()
    step = AdversarialStep(g, d, tf.keras.optimizers.Adam(1e-3), tf.keras.optimizers.Adam(1e-3),
                           global_batch_size=4, latent_dim=16, seed=3, r1_gamma=2.0)
    real = tf.random.stateless_uniform([4, SIZE, SIZE, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(0, tf.int64)
    fake = g(latent_batch(3, s, 0, 4, 16), training=True)
    with tf.GradientTape() as tape:
        tape.watch(real)
        total = tf.reduce_sum(d(tf.concat([real, fake], 0), training=True)[:4])
    grad = tape.gradient(total, real).numpy()
    expected = 0.5 * 2.0 * np.mean(np.sum(grad.reshape(4, -1) ** 2, axis=1))
    out = step.d_step(real, s)
    assert expected > 0
    assert float(out["r1_penalty"]) == pytest.approx(expected, rel=1e-3)
    assert float(_step(*_models()).d_step(real, s)["r1_penalty"]) == 0.0  # off by default


def _cfg(tmp_path, out, **kw):
    base = dict(
        data="builtin://phantom",
        out=str(tmp_path / out),
        image_size=SIZE,
        steps=4,
        batch_size=4,
        seed=7,
        checkpoint_every=2,
        backbone=BACKBONE,
        backbone_weights="none",
        latent_dim=16,
        generator_width=2,
        log_every=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _final_weights(run_dir):
    from medsynth.train.checkpoints import load_generator

    g, info = load_generator(run_dir)
    return [v.numpy() for v in g.weights], info


@pytest.mark.slow
def test_train_writes_outputs_and_resumes_exactly(tmp_path):
    from medsynth.train.loop import train

    straight = train(_cfg(tmp_path, "runs/r/straight", steps=6))
    assert straight.step == 6
    run = straight.run_dir
    for rel in [
        "config.json",
        "metrics.json",
        "history.jsonl",
        "losses.png",
        "samples/latest.png",
        "samples/step_000006.png",
        "checkpoints/model.json",
    ]:
        assert (run / rel).exists(), rel
    assert list((run / "tensorboard").iterdir())
    m = straight.metrics  # the first step (tracing, compiling) is timed apart from the rate
    assert 0 < m["first_step_seconds"] < m["wall_seconds"]
    assert m["images_per_s"] == pytest.approx(5 * 4 / (m["wall_seconds"] - m["first_step_seconds"]))

    first = train(_cfg(tmp_path, "runs/r/resumed", steps=4))
    assert first.step == 4
    second = train(_cfg(tmp_path, "runs/r/resumed", steps=6))
    assert second.step == 6 and second.metrics["steps_this_run"] == 2  # continued at the saved step
    a, info_a = _final_weights(straight.run_dir)
    b, info_b = _final_weights(second.run_dir)
    assert info_a["step"] == info_b["step"] == 6
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # bitwise: iterator, latents and optimizers all restored

    ckpt_files = {p: p.stat().st_mtime_ns for p in (second.run_dir / "checkpoints").iterdir()}
    again = train(_cfg(tmp_path, "runs/r/resumed", steps=6))
    assert again.step == 6 and again.metrics == second.metrics  # a finished run is not redone
    assert {p: p.stat().st_mtime_ns for p in (second.run_dir / "checkpoints").iterdir()} == ckpt_files
    steps = [r["step"] for r in read_history(second.run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # no duplicated rows after the resume


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(tmp_path):
    from medsynth.train.loop import train

    train(_cfg(tmp_path, "runs/r/a", steps=2))
    with pytest.raises(CheckpointError, match="another model"):
        train(_cfg(tmp_path, "runs/r/a", steps=4, generator_width=4))
    with pytest.raises(CheckpointError, match="another model"):  # same weights, other layers
        train(_cfg(tmp_path, "runs/r/a", steps=4, generator_upsampling="transpose"))


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"steps": -1}, "--steps"),
        ({"image_size": 48}, "not a power of two"),
        ({"backbone": "vgg16"}, "vgg16"),
        ({"strategy": "magic"}, "--strategy"),
        ({"batch_size": 0}, "--batch-size"),
        ({"deterministic": "yes"}, "--deterministic"),
        ({"generator_upsampling": "bilinear"}, "--generator-upsampling must be one of resize, transpose"),
        ({"d_augment": "translation,rotate"}, "--d-augment transformation 'rotate'"),
    ],
)
def test_bad_config_is_refused_with_the_flag_named(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(tmp_path, "x", **kw)


def test_determinism_is_on_for_cpus_and_lets_gpus_use_xla():
    from medsynth.train.devices import resolve_determinism, resolve_xla
    from medsynth.train.strategy import make_distribution

    assert resolve_determinism("auto", None) is True  # CPU: bitwise-exact resume
    assert resolve_determinism("auto", (9, 0)) is False
    assert resolve_determinism("on", (9, 0)) is True and resolve_determinism("off", None) is False
    one = make_distribution("one")
    h100 = (9, 0)
    assert resolve_xla("auto", h100, one, resolve_determinism("auto", h100)) is True
    assert resolve_xla("auto", h100, one, resolve_determinism("on", h100)) is False
    assert resolve_xla("auto", None, one, resolve_determinism("auto", None)) is False


# --- precision, the frozen-backbone shortcut, FLOPs --------------------------------------------------


def test_mixed_precision_keeps_outputs_float32_and_scales_float16_losses(tmp_path):
    from medsynth.train.devices import resolve_precision
    from medsynth.train.models import _optimizer, build_models

    assert resolve_precision("auto", None) == "float32"  # CPU
    assert resolve_precision("auto", (7, 5)) == "mixed_float16"  # T4
    assert resolve_precision("auto", (9, 0)) == "mixed_bfloat16"  # H100
    assert resolve_precision("off", (9, 0)) == "float32"
    cfg = _cfg(tmp_path, "x")
    for policy in ("mixed_float16", "mixed_bfloat16"):
        g, d = build_models(cfg, policy)
        assert tf.keras.mixed_precision.global_policy().name == "float32"  # not leaked
        assert g.get_layer("level1_conv").compute_dtype != "float32"  # the body runs in low precision
        z = tf.random.stateless_normal([2, cfg.latent_dim], seed=[1, 1])
        images = g(z, training=False)
        assert images.dtype == tf.float32 and d(images, training=False).dtype == tf.float32
    assert isinstance(_optimizer(1e-3, 0.5, "mixed_float16"), tf.keras.mixed_precision.LossScaleOptimizer)
    plain = _optimizer(1e-3, 0.5, "mixed_bfloat16")
    assert not isinstance(plain, tf.keras.mixed_precision.LossScaleOptimizer)


def test_frozen_backbone_features_are_reused_with_the_same_result():
    """The G update reuses the real frames' features of a frozen backbone: same numbers as running D whole."""
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    def run(split: bool):
        tf.keras.utils.set_random_seed(0)
        g = build_generator(SIZE, latent_dim=16, width=2)
        # a random ResNet50 has healthy features at 32 px (a random MobileNet's vanish)
        d = build_discriminator(SIZE, backbone="resnet50", weights="none", mode="frozen")
        step = _step(g, d)
        assert (step._split is not None) == True  # noqa: E712 - frozen: the shortcut applies
        if not split:
            step._split = None
        real = tf.random.stateless_uniform([4, SIZE, SIZE, 1], seed=[1, 2], minval=-1, maxval=1)
        for i in range(2):
            out = step.train_step(real, tf.constant(i, tf.int64))
        return [v.numpy() for v in g.variables + d.variables], out

    a, out_a = run(True)
    b, out_b = run(False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert float(out_a["g_loss"]) == pytest.approx(float(out_b["g_loss"]), rel=1e-4)


def test_analytic_flops_match_tf_profiler_on_the_generator():
    from medsynth.models.generator import build_generator
    from medsynth.train.flops import model_flops, profiler_forward_flops, step_flops

    g = build_generator(SIZE, latent_dim=16, width=2)
    analytic = sum(r.flops for r in model_flops(g))
    assert analytic == pytest.approx(profiler_forward_flops(g), rel=1e-6)
    g2, d = _models()
    f = step_flops(g2, d, batch=4)
    assert f["step"] == f["d_step"] + f["g_step"] and f["frozen_backbone"] == 0.0
    # the G update costs at least G forward + backward (3x forward) on the batch
    assert f["g_step"] > 3 * 4 * f["g_forward_per_image"]


def test_xla_compiles_the_whole_step_and_agrees_with_the_plain_one():
    """G's up-sampling is a broadcast, so XLA compiles the step (Keras' UpSampling2D has no XLA gradient)."""
    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    def run(jit: bool):
        tf.keras.utils.set_random_seed(0)
        g = build_generator(SIZE, latent_dim=16, width=2)
        # frozen random ResNet50: well-conditioned features (a learning backbone's BN on 1x1 maps of
        # 8 frames amplifies float rounding into % differences whichever compiler runs it)
        d = build_discriminator(SIZE, backbone="resnet50", weights="none", mode="frozen")
        # SGD with a small rate: Adam's first steps move every weight by ±lr whatever its
        # gradient's size, and a GAN at a large rate turns rounding into divergence within steps
        step = AdversarialStep(g, d, tf.keras.optimizers.SGD(1e-3), tf.keras.optimizers.SGD(1e-3),
                               global_batch_size=4, latent_dim=16, seed=3, jit_compile=jit)
        real = tf.random.stateless_uniform([4, SIZE, SIZE, 1], seed=[5, 6], minval=-1, maxval=1)
        before = [v.numpy() for v in g.trainable_variables]
        out = [step.train_step(real, tf.constant(i, tf.int64)) for i in range(2)][-1]
        assert _changed(before, g)
        return out, g

    from tensorflow.python.framework import config as tf_config

    # XLA has no deterministic MaxPool gradient: op determinism (on once any train() ran in this
    # process) would refuse ResNet50 under XLA; train() itself keeps XLA off when deterministic
    deterministic = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        (plain, g0), (xla, g1) = run(False), run(True)
    finally:
        if deterministic:
            tf_config.enable_op_determinism()
    for k in ("d_loss", "d_real", "d_fake", "g_loss"):
        assert float(xla[k]) == pytest.approx(float(plain[k]), rel=1e-4), k
    for a, b in zip(g0.trainable_variables, g1.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=5e-4)  # weights ~0.1; 2 steps of 1e-3


@pytest.mark.slow
def test_a_run_continues_another_run_of_the_same_model_exactly(tmp_path):
    """The pipeline's final training continues the winner's comparison run: same numbers as one run."""
    from medsynth.train.loop import train

    straight = train(_cfg(tmp_path, "runs/r/straight", steps=6))
    short = train(_cfg(tmp_path, "runs/r/short", steps=4))
    final = train(_cfg(tmp_path, "runs/r/final", steps=6, init_from=str(short.run_dir)))
    assert final.metrics["steps_this_run"] == 2  # started at the short run's step 4
    a, _ = _final_weights(straight.run_dir)
    b, info = _final_weights(final.run_dir)
    assert info["step"] == 6
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert [r["step"] for r in read_history(final.run_dir)] == list(range(1, 7))  # curves from step 1

    with pytest.raises(CheckpointError, match="another model.*generator_width"):
        train(_cfg(tmp_path, "runs/r/wide", steps=6, generator_width=4, init_from=str(short.run_dir)))
    with pytest.raises(CheckpointError, match="--init-from .*no complete checkpoint"):
        train(_cfg(tmp_path, "runs/r/none", steps=6, init_from=str(tmp_path / "runs" / "r" / "missing")))
