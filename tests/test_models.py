"""The networks: generator (Table 1), backbones (Table 2), discriminator and parameter counts (Table 3)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.backbones import (
    BackboneInput,
    backbone_names,
    build_backbone,
    get_backbone,
)
from medsynth.models.discriminator import backbone_of, build_discriminator, resolve_mode
from medsynth.models.generator import build_generator
from medsynth.models.layers import normalization
from medsynth.models.summary import ParamCounts, count_params, summary_table

slow = pytest.mark.slow
TABLE2 = ["ResNet50", "ResNet101", "ResNet50V2", "InceptionV3", "MobileNet", "MobileNetV2", "NASNetMobile",
          "Xception"]


# --- generator ----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [8, 32, 64])
def test_generator_makes_frames_of_the_asked_size_in_tanh_range(size):
    g = build_generator(size, latent_dim=16, width=2)
    assert g.name == "generator" and g.input_shape == (None, 16)
    z = tf.random.stateless_normal((3, 16), seed=(1, size))
    for training in (False, True):
        images = g(z, training=training).numpy()
        assert images.shape == (3, size, size, 1) and images.dtype == np.float32
        assert np.isfinite(images).all() and images.min() >= -1.0 and images.max() <= 1.0
    assert images.std() > 0  # not a constant frame


def test_generator_follows_table1_at_256px_and_has_the_reconstructed_counts():
    g = build_generator(256)
    # The seed README's measured counts of its "closest concatenating wiring"
    # (the paper: 17,074,528 / 17,016,608 / 57,920).
    assert count_params(g) == ParamCounts(17_055_472, 17_016_912, 38_560)
    assert g.output_shape == (None, 256, 256, 1)
    levels = sorted({layer.name.split("_")[0] for layer in g.layers if layer.name.startswith("level")})
    assert levels == [f"level{i}" for i in range(1, 7)]  # six up-sampling levels
    # Table 1, shown for l = 6: filters, kernels and strides of each layer.
    expected = {
        "level6_conv": (tf.keras.layers.Conv2D, 512, (3, 3), (1, 1)),
        "level6_conv1": (tf.keras.layers.Conv2D, 1024, (1, 1), (1, 1)),
        "level6_deconv1": (tf.keras.layers.Conv2DTranspose, 512, (3, 3), (2, 2)),
        "level6_conv2": (tf.keras.layers.Conv2D, 1024, (1, 1), (1, 1)),
        "level6_deconv2": (tf.keras.layers.Conv2DTranspose, 512, (1, 1), (2, 2)),
    }
    for name, (cls, filters, kernel, strides) in expected.items():
        layer = g.get_layer(name)
        transposed = isinstance(layer, tf.keras.layers.Conv2DTranspose)
        assert isinstance(layer, cls) and transposed == (cls is tf.keras.layers.Conv2DTranspose)
        assert layer.padding == "same"
        assert (layer.filters, layer.kernel_size, layer.strides) == (filters, kernel, strides)
    assert g.get_layer("level6_upsample").size == (2, 2)
    assert g.get_layer("level6_concat").output_shape == (None, 8, 8, 3 * 512)

    # Resize-convolutions instead (Odena et al. 2016): the same weights, no transposed layer.
    r = build_generator(256, upsampling="resize")
    assert count_params(r) == count_params(g) and r.output_shape == g.output_shape
    assert not any(isinstance(la, tf.keras.layers.Conv2DTranspose) for la in r.layers)
    for name in ("level6_deconv1", "level6_deconv2"):
        assert r.get_layer(name).kernel.shape.num_elements() == g.get_layer(name).kernel.shape.num_elements()
        assert r.get_layer(f"{name}_resize").output_shape == (None, 8, 8, 1024)
    with pytest.raises(ConfigError, match="unknown up-sampling 'bilinear'; use one of: resize, transpose"):
        build_generator(32, upsampling="bilinear")


@pytest.mark.parametrize("size", [100, 4, 2048, 0, -8, 96])
def test_generator_refuses_sizes_it_cannot_make(size):
    with pytest.raises(ConfigError, match=f"image size {size} is not a power of two"):
        build_generator(size)


def test_normalization_kinds():
    bn = normalization("batch")
    assert isinstance(bn, tf.keras.layers.BatchNormalization) and bn.synchronized
    x = tf.random.stateless_normal((2, 4, 4, 48), seed=(0, 1)) * 3.0 + 5.0
    for kind in ("instance", "group"):
        y = normalization(kind)(x).numpy()  # 48 channels: group norm picks 16 groups, not 32
        assert abs(y.mean()) < 1e-3 and abs(y.std() - 1.0) < 1e-2
    with pytest.raises(ConfigError, match="batch, instance, group"):
        normalization("layer")
    with pytest.raises(ConfigError, match="batch, instance, group"):
        build_generator(32, norm="weight")


@slow
def test_tfa_generators_save_and_load_without_addons_or_medsynth(tmp_path):
    """A SavedModel of an instance/group/spectral-norm generator must load where neither is installed."""
    z = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    expected = {}
    variants = {"instance": {"norm": "instance"}, "group_sn": {"norm": "group", "spectral": True}}
    for name, kwargs in variants.items():
        g = build_generator(16, latent_dim=16, width=2, **kwargs)
        serve = tf.function(lambda z, g=g: g(z, training=False),
                            input_signature=[tf.TensorSpec([None, 16], tf.float32, name="z")])
        module = tf.Module()
        module.variables_ = g.variables  # a lean SavedModel: one signature, no Keras layer metadata
        tf.saved_model.save(module, str(tmp_path / name), signatures={"serving_default": serve})
        expected[name] = g(z, training=False).numpy().tolist()
    (tmp_path / "expected.json").write_text(json.dumps(expected))
    script = textwrap.dedent(
        """
        import json, sys
        sys.modules["tensorflow_addons"] = None  # any import of it now fails
        sys.modules["medsynth"] = None
        import numpy as np, tensorflow as tf
        z = np.load("z.npy")
        for name, want in json.load(open("expected.json")).items():
            fn = tf.saved_model.load(name).signatures["serving_default"]
            (got,) = fn(z=tf.constant(z)).values()
            np.testing.assert_allclose(got.numpy(), np.array(want), atol=1e-5)
            print("loaded", name)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["loaded", "instance", "loaded", "group_sn"]


# --- backbones ----------------------------------------------------------------------------------


def test_backbone_registry_has_table2_and_accepts_the_papers_spelling():
    assert backbone_names() == [n.lower() for n in TABLE2]
    for paper_name in TABLE2:
        spec = get_backbone(paper_name)
        assert spec.paper_name == paper_name and get_backbone(spec.name) is spec
    assert get_backbone("mobilenet_v2").name == "mobilenetv2"
    assert get_backbone("Xception").imagenet_params == 22_910_480
    with pytest.raises(ConfigError, match="resnet50, resnet101.*xception"):
        get_backbone("vgg16")
    with pytest.raises(ConfigError, match="unknown backbone 'vgg16'"):
        build_discriminator(32, "vgg16", weights="none")


def test_backbone_input_maps_frames_to_each_preprocessing():
    frames = tf.constant([[[[-1.0], [0.0]], [[1.0], [0.5]]]])  # 1 x 2 x 2 x 1
    caffe = BackboneInput("resnet50", 2)(frames).numpy()  # BGR, ImageNet mean subtracted, 0-255
    mean_bgr = np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(caffe[0, 0, 0], 0.0 - mean_bgr, atol=1e-3)
    np.testing.assert_allclose(caffe[0, 1, 0], 255.0 - mean_bgr, atol=1e-3)
    tf_mode = BackboneInput("xception", 4)(frames).numpy()  # [-1, 1], resized to 4 x 4
    assert tf_mode.shape == (1, 4, 4, 3)
    assert tf_mode.min() >= -1.0 - 1e-6 and tf_mode.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(tf_mode[..., 0], tf_mode[..., 2])


_HEAVY = {"resnet101", "inceptionv3", "nasnetmobile"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=slow) if n in _HEAVY else n for n in backbone_names()]
)
def test_every_backbone_makes_a_discriminator_with_finite_logits(name, caplog):
    spec = get_backbone(name)
    with caplog.at_level(logging.INFO, logger="medsynth"):
        d = build_discriminator(32, name, weights="none")
    assert "trainable" in caplog.text and "weights 'none'" in caplog.text
    net = backbone_of(d)
    assert d.name == "discriminator" and net.input_shape == (None, max(32, spec.min_size),
                                                             max(32, spec.min_size), 3)
    assert net.output_shape[-1] == spec.feature_dim
    assert net.trainable and count_params(d).trainable > spec.feature_dim
    bns = [la for la in net._flatten_layers() if isinstance(la, tf.keras.layers.BatchNormalization)]
    assert bns and all(b.synchronized and not b.fused for b in bns)
    frames = tf.random.stateless_uniform((2, 32, 32, 1), seed=(2, 3), minval=-1, maxval=1)
    logits = d(frames, training=True).numpy()
    assert logits.shape == (2, 1) and np.isfinite(logits).all()


def test_xception_frozen_at_256px_is_the_papers_discriminator(caplog):
    with caplog.at_level(logging.WARNING, logger="medsynth"):
        d = build_discriminator(256, "Xception", weights="none", mode="frozen")
    assert "random" in caplog.text  # frozen + random weights is allowed, but warned about
    assert count_params(d) == ParamCounts(20_867_624, 2_048, 20_865_576)  # Table 3
    assert [v.name for v in d.trainable_variables] == ["logit/kernel:0"]
    assert d.trainable_variables[0].shape == (2048, 1)

    # Frozen = inference mode: a training step must not move the backbone's BN statistics,
    # while the head's own BN does learn them.
    net = backbone_of(d)
    backbone_bn = next(la for la in net.layers if isinstance(la, tf.keras.layers.BatchNormalization))
    before = backbone_bn.moving_mean.numpy().copy()
    head_before = d.get_layer("head_norm").moving_mean.numpy().copy()
    frames = tf.random.stateless_uniform((2, 256, 256, 1), seed=(4, 5), minval=-1, maxval=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(d(frames, training=True))
    grads = tape.gradient(loss, d.trainable_variables)
    assert len(grads) == 1 and np.isfinite(grads[0].numpy()).all()
    np.testing.assert_array_equal(backbone_bn.moving_mean.numpy(), before)
    assert not np.allclose(d.get_layer("head_norm").moving_mean.numpy(), head_before)


def test_convnet_baseline_is_a_dcgan_discriminator_outside_table2(caplog):
    assert "convnet" not in backbone_names() and backbone_names(baseline=True)[-1] == "convnet"
    spec = get_backbone("ConvNet")
    assert not spec.in_table2 and spec.imagenet_params is None
    # Asked for ImageNet weights (the pipeline's one weights parameter), it learns from scratch.
    with caplog.at_level(logging.INFO, logger="medsynth"):
        d = build_discriminator(32, "convnet", weights="imagenet")
    assert "no ImageNet weights" in caplog.text
    net = backbone_of(d)
    assert net.trainable and net.output_shape == (None, 4, 4, 257)  # 3 stride-2 convs + stddev channel
    assert not any(isinstance(la, tf.keras.layers.BatchNormalization) for la in d._flatten_layers())
    # DCGAN's head: the 4x4x257 map flattened into one logit with a bias, every weight trainable.
    assert d.get_layer("logit").kernel.shape == (4 * 4 * 257, 1) and d.get_layer("logit").use_bias
    assert count_params(d).non_trainable == 0
    expected = (3 * 16 * 64 + 64) + (64 * 16 * 128 + 128) + (128 * 16 * 256 + 256) + 4 * 4 * 257 + 1
    assert count_params(d).trainable == expected
    frames = tf.random.stateless_uniform((2, 32, 32, 1), seed=(2, 3), minval=-1, maxval=1)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(d(frames, training=True))
    grads = tape.gradient(loss, d.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() and np.abs(g.numpy()).sum() > 0 for g in grads)
    # Small frames are resized up to its 16 px minimum; build_backbone refuses ImageNet weights.
    assert backbone_of(build_discriminator(8, "convnet", weights="none")).input_shape == (None, 16, 16, 3)
    with pytest.raises(ConfigError, match="convnet has no ImageNet weights"):
        build_backbone("convnet", 32, "imagenet")


@pytest.mark.parametrize("half", [8, 6, 3])
def test_minibatch_stddev_never_mixes_real_and_generated_frames(half):
    from medsynth.models.layers import MinibatchStddev

    real = tf.ones([half, 4, 4, 2]) * 0.5  # identical frames: no spread within any real group
    fake = tf.random.stateless_normal([half, 4, 4, 2], seed=(7, half))
    out = MinibatchStddev()(tf.concat([real, fake], 0)).numpy()
    assert out.shape == (2 * half, 4, 4, 3)
    np.testing.assert_array_equal(out[..., :2], tf.concat([real, fake], 0).numpy())
    spread = out[:, 0, 0, 2]
    assert np.allclose(spread[:half], 1e-4, atol=1e-4)  # sqrt(0 + 1e-8): real groups hold only reals
    assert (spread[half:] > 0.3).all()  # generated groups see their spread
    g = {8: 4, 6: 3, 3: 3}[half]  # the largest group <= 4 dividing the half
    per_group = spread[half:].reshape(-1, g)
    assert np.allclose(per_group, per_group[:, :1]) and len(np.unique(per_group[:, 0])) == half // g


def test_resolve_mode():
    assert resolve_mode("imagenet", None) == "frozen"
    assert resolve_mode("/some/file.h5", None) == "frozen"
    assert resolve_mode("none", None) == resolve_mode(None, None) == "trainable"
    assert resolve_mode("none", "Frozen") == "frozen"
    with pytest.raises(ConfigError, match="frozen, trainable"):
        resolve_mode("none", "half")


def test_backbone_weights_load_from_a_local_file(tmp_path):
    source = build_backbone("mobilenet", 32, "none")
    path = str(tmp_path / "mobilenet_notop.h5")
    source.save_weights(path)

    d = build_discriminator(32, "MobileNet", weights=path)  # a weights file → frozen by default
    net = backbone_of(d)
    assert not net.trainable and count_params(d).trainable == 1024
    for mine, theirs in zip(net.weights, source.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())

    with pytest.raises(ConfigError, match="missing.h5 does not exist"):
        build_backbone("mobilenet", 32, str(tmp_path / "missing.h5"))
    other = str(tmp_path / "dense.h5")
    tiny = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    tiny.save_weights(other)
    with pytest.raises(ConfigError, match="dense.h5 does not fit mobilenet"):
        build_backbone("mobilenet", 32, other)


def test_imagenet_weights_without_network_say_what_to_do(keras_downloads):
    asked = keras_downloads
    with pytest.raises(ConfigError) as err:
        build_discriminator(32, "mobilenet", weights="imagenet")
    message = str(err.value)
    assert "ImageNet weights of mobilenet could not be fetched" in message
    assert "local weights file" in message and "none" in message
    assert asked and "mobilenet" in asked[0]  # it really tried keras' own download


def test_too_small_backbone_input_is_refused():
    with pytest.raises(ConfigError, match="at least 71 px"):
        build_backbone("xception", 32, "none")


@slow
def test_synchronized_batch_norm_makes_two_devices_compute_what_one_does():
    """Setting `synchronized` on a built keras BN layer is not enough (the fused kernel ignores it)."""
    script = textwrap.dedent(
        """
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from medsynth.models.layers import synchronize_batch_norm

        x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 3)).astype("float32")
        x[:4] += 2.0  # the two replicas see different statistics
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for sync in (False, True):
            tf.keras.utils.set_random_seed(0)
            with strategy.scope():
                layers = tf.keras.layers
                net = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), layers.Conv2D(4, 3),
                                           layers.BatchNormalization(), layers.ReLU(),
                                           layers.Conv2D(4, 3), layers.BatchNormalization()])
                changed = synchronize_batch_norm(net) if sync else 0
            one = net(x, training=True).numpy()
            batches = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(x))
            step = tf.function(lambda b: net(b, training=True))
            per_replica = strategy.run(step, args=(next(iter(batches)),))
            two = np.concatenate([t.numpy() for t in strategy.experimental_local_results(per_replica)])
            print(sync, changed, float(np.abs(two - one).max()))
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line[:1] in "TF"}
    assert float(rows["False"][1]) > 1e-2  # plain BN: each replica normalises its own half
    assert rows["True"][0] == "2" and float(rows["True"][1]) < 1e-5


# --- summary ------------------------------------------------------------------------------------


def _row(block: str, label: str) -> list[float]:
    """The numbers of the row of `block` that starts with `label`."""
    line = next(x for x in block.splitlines() if x.strip().startswith(label + " "))
    return [float(t.replace(",", "").rstrip("%")) for t in line.strip()[len(label):].split()]


def test_summary_cli_prints_table3_against_the_paper(capsys):
    from medsynth.cli import main

    args = ["summary", "--image-size", "256", "--backbone", "xception", "--backbone-weights", "none"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "backbone trainable: the default for weights 'none'" in out
    used = out.split("this build, backbone trainable:")[1]
    used, frozen = used.split("the same, backbone frozen (the paper's setting):")
    frozen, paper = frozen.split("against the paper")
    assert _row(used, "generator") == [17_055_472, 17_016_912, 38_560]
    assert _row(used, "discriminator")[0] == 20_867_624 and _row(used, "discriminator")[1] > 20_000_000
    assert _row(frozen, "discriminator") == [20_867_624, 2_048, 20_865_576]  # Table 3
    assert _row(paper, "discriminator trainable") == [2_048, 2_048, 0.0]
    assert _row(paper, "generator total") == [17_055_472, 17_074_528, -0.112]
    assert _row(paper, "GAN total")[:2] == [17_055_472 + 20_867_624, 37_942_152]


def test_summary_with_imagenet_weights_counts_frozen_and_downloads_nothing(keras_downloads):
    asked = keras_downloads
    table = summary_table(image_size=32, backbone="mobilenet", backbone_weights="imagenet")
    assert not asked
    assert "backbone frozen: the default for ImageNet weights" in table
    frozen = table.split("this build, backbone frozen")[1].split("the same")[0]
    assert _row(frozen, "discriminator")[1] == 1_024  # only the head on MobileNet's 1,024 features
    assert "The paper reports 256 px with Xception only" in table


def test_nearest_upsampling_is_keras_upsampling_with_an_xla_gradient():
    from medsynth.models.layers import NearestUpSampling2D

    x = tf.random.stateless_normal([2, 3, 5, 4], seed=[1, 2])
    keras = tf.keras.layers.UpSampling2D(2)(x).numpy()
    np.testing.assert_array_equal(NearestUpSampling2D(2)(x).numpy(), keras)

    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(NearestUpSampling2D(2)(x) * tf.range(10.0)[None, None, :, None])
        return tape.gradient(y, x)

    # each input pixel's gradient is the sum of the weights of the 2x2 block it was copied to
    w = np.arange(10.0)[None, None, :, None] * np.ones([2, 6, 10, 4])  # the output is 6 x 10
    expected = w.reshape(2, 3, 2, 5, 2, 4).sum(axis=(2, 4))
    for jit in (True, False):
        np.testing.assert_allclose(tf.function(grad, jit_compile=jit)(x).numpy(), expected)


def test_fuse_batch_norm_keeps_the_numbers_and_runs_one_fused_kernel():
    """One replica: synchronised BN's separate ops become FusedBatchNormV3 (what train() uses there)."""
    from medsynth.models.generator import build_generator
    from medsynth.models.layers import fuse_batch_norm

    tf.keras.utils.set_random_seed(0)
    g = build_generator(32, latent_dim=16, width=2)
    z = tf.random.stateless_normal([4, 16], seed=[3, 4])

    def norm_ops():
        fn = tf.function(lambda t: g(t, training=True)).get_concrete_function(z)
        return {op.type for op in fn.graph.get_operations()}

    before = g(z, training=True).numpy()
    assert "FusedBatchNormV3" not in norm_ops()
    assert fuse_batch_norm(g) == sum(isinstance(x, tf.keras.layers.BatchNormalization) for x in g.layers)
    assert "FusedBatchNormV3" in norm_ops()
    np.testing.assert_allclose(g(z, training=True).numpy(), before, atol=1e-3)
    assert fuse_batch_norm(g) == 0  # nothing synchronised is left


@pytest.mark.parametrize(
    "strides,padding,size", [(1, "same", 7), (2, "same", 7), (2, "valid", 8), (2, "same", 8)]
)
def test_forward_gradient_convolutions_keep_the_numbers_and_the_gradients(strides, padding, size):
    """Conv2D (1x1 any stride, odd kernels stride-1 SAME) and SeparableConv2D switched to
    `forward_gradient_conv`: same outputs, same gradients; other convolutions left alone."""
    from medsynth.models.layers import (
        ForwardGradientConv2D,
        ForwardGradientSeparableConv2D,
        use_forward_gradients,
    )

    def net() -> tf.keras.Model:
        x = inp = tf.keras.Input((size, size, 5))
        x = tf.keras.layers.Conv2D(6, 3, padding="same", name="c3")(x)
        x = tf.keras.layers.Conv2D(7, 1, strides=strides, padding=padding, name="c1")(x)
        x = tf.keras.layers.SeparableConv2D(4, 3, padding="same", use_bias=False, name="sep")(x)
        x = tf.keras.layers.Conv2D(3, 5, padding="same", use_bias=False, name="c5")(x)
        x = tf.keras.layers.Conv2D(2, 3, strides=2, padding="same", name="c3s2")(x)  # not covered
        return tf.keras.Model(inp, x)

    tf.keras.utils.set_random_seed(3)
    stock, fast = net(), net()
    fast.set_weights(stock.get_weights())
    assert use_forward_gradients(fast) == 4
    for name in ("c3", "c1", "c5"):
        assert type(fast.get_layer(name)) is ForwardGradientConv2D
    assert type(fast.get_layer("sep")) is ForwardGradientSeparableConv2D
    assert type(fast.get_layer("c3s2")) is tf.keras.layers.Conv2D
    x = tf.random.stateless_normal([3, size, size, 5], [1, 2])

    def run(model: tf.keras.Model) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = model(x)
            loss = tf.reduce_sum(y * tf.random.stateless_normal(tf.shape(y), [3, 4]))
        return y, tape.gradient(loss, [x, *model.trainable_variables])

    (y0, g0), (y1, g1) = run(stock), run(fast)
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=1e-5, atol=1e-5)
    assert len(g0) == len(g1) == 10  # x; c3, c1: kernel+bias; sep: 2 kernels; c5: kernel; c3s2: kernel+bias
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)
    # the input gradients run as forward convolutions: only the uncovered layer keeps Conv2DBackpropInput
    graph = tf.function(lambda: run(fast)[1]).get_concrete_function().graph
    backprop = [op.name for op in graph.get_operations() if op.type == "Conv2DBackpropInput"]
    assert len(backprop) == 1 and "c3s2" in backprop[0], backprop


def test_backbones_and_the_generator_are_built_with_forward_gradients():
    from medsynth.models.layers import ForwardGradientConv2D, ForwardGradientSeparableConv2D

    net = build_backbone("xception", 71, "none")
    kinds = {type(layer) for layer in net.layers}
    assert ForwardGradientSeparableConv2D in kinds and ForwardGradientConv2D in kinds
    assert tf.keras.layers.SeparableConv2D not in kinds
    g = build_generator(32, latent_dim=8, width=2)
    convs = [layer for layer in g.layers if isinstance(layer, tf.keras.layers.Conv2D)
             and not isinstance(layer, tf.keras.layers.Conv2DTranspose)]
    assert convs and all(type(layer) is ForwardGradientConv2D for layer in convs)
