"""`--generator fastgan`: FastGAN's generator as Projected GAN runs it, trained, resumed, exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import CheckpointError, ConfigError
from medsynth.models.fastgan import GLU, build_fastgan, excitation_sources
from medsynth.models.layers import SpectralConv2D, SpectralDense, spectral_kernel
from medsynth.pictures import to_uint8
from medsynth.train.config import TrainConfig

SIZE, LATENT, WIDTH = 32, 16, 4


@pytest.fixture(scope="module")
def generator() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(5)
    g = build_fastgan(SIZE, latent_dim=LATENT, width=WIDTH)
    for i in range(30):  # batch norm's moving statistics: those of G's own activations (PyTorch's momentum)
        g(_z(16, seed=100 + i), training=True)
    return g


def _z(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, LATENT)).astype(np.float32)


def test_frames_in_tanh_range_from_every_weighted_layer_spectrally_normalised(generator):
    images = generator(_z(4), training=False).numpy()
    assert images.shape == (4, SIZE, SIZE, 1)
    assert np.abs(images).max() <= 1 and images.std() > 0
    assert not np.allclose(images[0], images[1])  # z matters
    weighted = [layer for layer in generator.layers if layer.weights and not isinstance(
        layer, tf.keras.layers.BatchNormalization)]
    assert weighted and all(isinstance(layer, (SpectralConv2D, SpectralDense)) for layer in weighted)
    assert sum(isinstance(layer, GLU) for layer in generator.layers) == 2 * 3 + 1  # 2 per up-block, init
    # skip-layer excitation: the 4x4 map gates the last level's channels under 64 px; 4 → 64 above
    assert generator.get_layer("se4_32").output.shape[1:] == (SIZE, SIZE, 2 * WIDTH)
    assert excitation_sources(64) == {64: 4} and excitation_sources(256) == {64: 4, 128: 8, 256: 16}


def test_z_is_normalised_so_its_scale_does_not_matter(generator):
    z = _z(3, seed=1)
    np.testing.assert_allclose(generator(3.0 * z, training=False), generator(z, training=False), atol=1e-5)


def test_spectral_kernel_divides_by_the_largest_singular_value_and_advances_only_in_training():
    kernel = tf.constant(np.random.default_rng(2).normal(size=(3, 3, 5, 7)).astype(np.float32))
    u = tf.Variable(tf.random.stateless_normal([1, 7], seed=[1, 2]))
    start = u.numpy().copy()
    spectral_kernel(kernel, u, training=False)
    np.testing.assert_array_equal(u.numpy(), start)  # inference: a function of the weights alone
    for _ in range(50):
        normalised = spectral_kernel(kernel, u, training=True)
    assert np.linalg.svd(normalised.numpy().reshape(-1, 7), compute_uv=False)[0] == pytest.approx(1, abs=1e-4)
    # PyTorch's semantics: the gradient flows through σ. Kernel / σ does not change when the kernel is
    # scaled, so any loss of it has no gradient along the kernel (with σ held constant it would be the loss)
    target = tf.random.stateless_normal(kernel.shape, seed=[3, 4])
    with tf.GradientTape() as tape:
        tape.watch(kernel)
        loss = tf.reduce_sum(spectral_kernel(kernel, u, training=False) * target)
    along = float(tf.reduce_sum(tape.gradient(loss, kernel) * kernel))
    assert abs(along) < 1e-4 * max(abs(float(loss)), 1.0)


def test_heat_maps_condition_every_level():
    g = build_fastgan(16, latent_dim=LATENT, width=WIDTH, condition_channels=3)
    maps = np.zeros((2, 16, 16, 3), np.float32)
    z = _z(2)
    other = maps.copy()
    other[:, 4, 9, 1] = 1.0
    assert not np.allclose(g([z, maps], training=False), g([z, other], training=False))
    assert any("up8_heatmaps" in layer.name for layer in g.layers)  # max-pooled to the 4x4 input


def test_mixed_precision_computes_in_bfloat16_and_every_weight_gets_a_gradient():
    from medsynth.train.models import generator_for

    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        g = generator_for(_cfg("d", Path("o"), image_size=16))
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
    with tf.GradientTape() as tape:
        images = g(_z(2), training=True)
        loss = tf.reduce_mean(tf.cast(images, tf.float32) ** 2)
    assert images.dtype == tf.bfloat16 and g.get_layer("up8_conv1").sn_u.dtype == tf.float32
    grads = tape.gradient(loss, g.trainable_variables)
    assert all(grad is not None and np.isfinite(grad.numpy()).all() for grad in grads)


def _cfg(data: str, out: Path, **kw) -> TrainConfig:
    base = dict(data=data, out=str(out), image_size=SIZE, steps=4, batch_size=4, seed=7, checkpoint_every=2,
                backbone="convnet", backbone_weights="none", latent_dim=LATENT, generator="fastgan",
                generator_width=WIDTH, log_every=1)
    return TrainConfig(**{**base, **kw})


def test_config_names_the_generator_in_the_signature_and_refuses_bad_values():
    cfg = _cfg("d", Path("o"))
    assert cfg.model_signature()["generator"] == "fastgan"
    assert TrainConfig.from_argv(cfg.to_argv()) == cfg
    assert _cfg("d", Path("o"), generator="paper", generator_width=None).generator_width == 8
    assert _cfg("d", Path("o"), generator_width=None).generator_width == 12
    with pytest.raises(ConfigError, match="unknown --generator 'stylegan'"):
        _cfg("d", Path("o"), generator="stylegan")
    with pytest.raises(ConfigError, match="--generator-upsampling transpose"):
        _cfg("d", Path("o"), generator_upsampling="transpose")
    old = {k: v for k, v in cfg.to_dict().items() if k != "generator"}  # a run saved before the option
    assert TrainConfig.from_saved(old).generator == "paper"


def test_train_help_lists_the_flag_and_a_bad_value_is_one_line_exit_2(capsys):
    from medsynth.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "--generator {paper,fastgan}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", "d", "--out", "o", "--generator", "stylegan"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    named = [line for line in err.splitlines() if "error:" in line and "--generator" in line]
    assert len(named) == 1 and "stylegan" in named[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from medsynth.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    return str(prepare(PrepareConfig(source="builtin://phantom", out=str(root), image_size=SIZE,
                                     phantom_frames=48)))


@pytest.mark.slow
def test_trains_resumes_bitwise_and_refuses_another_generator(dataset, tmp_path):
    from medsynth.train.checkpoints import SIGNATURE_FILE, load_generator
    from medsynth.train.loop import train

    straight = train(_cfg(dataset, tmp_path / "runs/a/straight"))
    train(_cfg(dataset, tmp_path / "runs/a/resumed", steps=2))
    resumed = train(_cfg(dataset, tmp_path / "runs/a/resumed"))
    assert resumed.metrics["steps_this_run"] == 2
    g_a, info = load_generator(straight.run_dir)
    g_b, _ = load_generator(resumed.run_dir)
    assert info["weights"] == "generator_ema" and g_a.name == "fastgan_generator"
    u = [w for w in g_a.weights if "sn_u" in w.name]
    assert u and all(np.isfinite(w.numpy()).all() for w in u)
    for x, y in zip(g_a.weights, g_b.weights, strict=True):  # power iterations' u included
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert straight.metrics["steps_this_run"] == 4 and np.isfinite(straight.metrics["final_g_loss"])

    with pytest.raises(CheckpointError, match="generator: checkpoint 'fastgan' vs now 'paper'"):
        train(_cfg(dataset, tmp_path / "runs/a/straight", steps=6, generator="paper", generator_width=WIDTH))
    # a run saved before the option (no "generator" in model.json) was Table 1's: fastgan cannot resume it
    sig = straight.run_dir / "checkpoints" / SIGNATURE_FILE
    old = json.loads(sig.read_text())
    sig.write_text(json.dumps({k: v for k, v in old.items() if k != "generator"}))
    with pytest.raises(CheckpointError, match="generator: checkpoint 'paper' vs now 'fastgan'"):
        train(_cfg(dataset, tmp_path / "runs/a/straight", steps=6))
    sig.write_text(json.dumps(old))


def test_export_keeps_the_signatures_and_serves_the_same_frames_without_project_code(generator, tmp_path):
    from medsynth.serving.export import export_generator

    model = export_generator(generator, tmp_path / "generator" / "1", metadata={"model_name": "generator"},
                             warmup=False)
    z = _z(3, seed=4)
    expected = to_uint8(generator(z, training=False).numpy()).astype(int)
    assert expected.std() > 1  # untrained and spectrally normalised: faint frames, but not one grey
    _served_without_project_code(model, z, expected)


def _served_without_project_code(model_dir: Path, z: np.ndarray, expected: np.ndarray) -> None:
    """`model_dir` loads in a process where medsynth and tensorflow_addons cannot be imported, and its
    default signature gives `expected` (uint8 frames) for `z` up to one rounding flip."""
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["tensorflow_addons"] = None  # any import of them now fails
        sys.modules["medsynth"] = None
        import numpy as np, tensorflow as tf
        m = tf.saved_model.load(sys.argv[1])
        z = np.array(json.loads(sys.argv[2]), np.float32)
        images = m.signatures["serving_default"](z=tf.constant(z))["images"].numpy()
        seeded = m.signatures["generate_from_seed"](seed=tf.constant([5, 6], tf.int64))["images"].numpy()
        differ = bool((seeded[0] != seeded[1]).any())
        print(json.dumps({"images": images[..., 0].tolist(), "seeds_differ": differ,
                          "signatures": sorted(m.signatures)}))
        """
    )
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", script, str(model_dir), json.dumps(z.tolist())],
                          capture_output=True, text=True, env=env, cwd=model_dir.parent, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["generate_from_seed", "png_from_seed", "serving_default"]
    diff = np.abs(np.array(out["images"]) - expected)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99 and out["seeds_differ"]


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_equals_one_device(dataset, tmp_path):
    """The power iterations' u are per-replica (SyncOnRead) variables written in replica context: two
    replicas must end where one device does, u included."""
    from test_distribute import _assert_close, _config, _finish, _load, _start

    fastgan = dict(generator="fastgan", generator_width=WIDTH)
    _finish(_start(_config(dataset, tmp_path / "one", strategy="one", batch_norm="synchronized", **fastgan),
                   tmp_path / "one"))
    _finish(_start(_config(dataset, tmp_path / "m", strategy="mirrored", **fastgan), tmp_path / "m",
                   "--logical-cpus", "2"))
    (one, _), (mirrored, info) = _load(tmp_path / "one"), _load(tmp_path / "m")
    assert info["settings"]["replicas"] == 2 and info["metrics"]["steps_this_run"] > 0
    _assert_close(mirrored, one)
