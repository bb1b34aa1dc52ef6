"""Labelled synthesis: the key-point-conditioned G and D, their training, export, serving and
`medsynth generate --keypoints`, on phantom frames at 32 px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medsynth.data import keypoints as kp
from medsynth.data.phantom import render_frame
from medsynth.errors import ConfigError
from medsynth.models.discriminator import build_discriminator
from medsynth.models.generator import build_generator
from medsynth.models.summary import count_params
from medsynth.train.augment import DEFAULT_POLICY, diff_augment, diff_augment_with_maps, parse_policy
from medsynth.train.config import TrainConfig
from medsynth.train.step import AdversarialStep, mismatched

SIZE, LATENT, C = 32, 16, len(kp.CLASSES)


def _labelled(n: int, size: int = SIZE, seed: int = 0) -> kp.LabelledFrames:
    frames = [render_frame(size, seed, i) for i in range(n)]
    points = [kp.FramePoints.from_dict(f.keypoints) for f in frames]
    return kp.LabelledFrames.from_points(np.stack([f.pixels for f in frames]), points)


def _batch(lf: kp.LabelledFrames) -> tuple[tf.Tensor, ...]:
    """What the feed yields with --condition keypoints: (frames in [-1, 1], points, classes, mask)."""
    frames = lf.images[..., None].astype(np.float32) / 127.5 - 1.0
    return tuple(tf.constant(a) for a in (frames, lf.points, lf.classes, lf.mask))


def _maps(lf: kp.LabelledFrames) -> tf.Tensor:
    return kp.heatmaps(lf.points, lf.classes, lf.mask, lf.size)


def test_conditional_g_takes_heat_maps_and_its_frames_follow_them():
    tf.keras.utils.set_random_seed(0)
    plain = build_generator(SIZE, latent_dim=LATENT, width=2)
    g = build_generator(SIZE, latent_dim=LATENT, width=2, condition_channels=C)
    assert [tuple(i.shape) for i in g.inputs] == [(None, LATENT), (None, SIZE, SIZE, C)]
    # the heat maps come in beside each level's input and the output layer's: a few more kernel rows
    levels = 3  # 4 -> 32 px
    extra = sum(C * 9 * 2**lv * 2 for lv in range(levels, 0, -1)) + C * 9
    assert count_params(g).total - count_params(plain).total == extra
    lf = _labelled(2)
    z = tf.random.stateless_normal([2, LATENT], seed=[1, 2])
    maps = _maps(lf)
    a = g([z, maps], training=False).numpy()
    assert a.shape == (2, SIZE, SIZE, 1)
    b = g([z, tf.reverse(maps, [0])], training=False).numpy()  # same z, the other frame's key points
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(a, g([z, maps], training=False).numpy())


def test_conditional_d_judges_the_frame_with_its_heat_maps():
    lf = _labelled(2)
    frames, maps = _batch(lf)[0], _maps(lf)
    tf.keras.utils.set_random_seed(0)
    d = build_discriminator(SIZE, backbone="convnet", weights="none", condition_channels=C)
    assert [tuple(i.shape) for i in d.inputs] == [(None, SIZE, SIZE, 1), (None, SIZE, SIZE, C)]
    assert d([frames, maps]).shape == (2, 1)
    assert not np.allclose(d([frames, maps]).numpy(), d([frames, tf.reverse(maps, [0])]).numpy())
    with pytest.raises(ConfigError, match="--condition keypoints"):
        build_discriminator(SIZE, backbone="mobilenet", weights="none", condition_channels=C)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"backbone": "mobilenet"}, "--condition keypoints needs a discriminator"),
        ({"backbone": "xception", "d_head": "paper"}, "--condition keypoints needs a discriminator"),
        ({"batch_size": 5}, "even --batch-size"),
        ({"keypoint_mismatch": -1.0}, "--keypoint-mismatch"),
        ({"condition": "labels"}, "--condition"),
    ],
)
def test_conditional_options_are_checked(tmp_path, kw, match):
    base = dict(
        data="x",
        out=str(tmp_path),
        image_size=SIZE,
        backbone="convnet",
        backbone_weights="none",
        condition="keypoints",
        batch_size=4,
    )
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{**base, **kw})
    assert TrainConfig(**{**base, "batch_size": 5, "keypoint_mismatch": 0.0}).condition == "keypoints"


def test_model_signature_keeps_conditional_and_unconditional_checkpoints_apart(tmp_path):
    base = dict(data="x", out=str(tmp_path), image_size=SIZE, backbone="convnet", backbone_weights="none")
    plain, cond = TrainConfig(**base), TrainConfig(**base, condition="keypoints")
    assert plain.model_signature()["condition"] == "none"
    assert cond.model_signature()["condition"] == "keypoints"
    assert TrainConfig.from_argv(cond.to_argv()) == cond  # the flag and the job argv follow the field


def test_diff_augment_moves_heat_maps_with_the_frame_and_colours_the_frame_alone():
    lf = _labelled(4)
    frames, maps = _batch(lf)[0], _maps(lf)
    u = tf.random.stateless_uniform([4, 6], seed=[3, 4])
    policy = parse_policy(DEFAULT_POLICY)
    x, m = diff_augment_with_maps(frames, maps, u, policy)
    np.testing.assert_array_equal(x.numpy(), diff_augment(frames, u, policy).numpy())  # frames as before
    # the maps went through the same translation and cutout as the frames, and no colour change
    geometric = parse_policy("translation,cutout")
    stacked = diff_augment(tf.concat([frames, maps], -1), u, geometric)
    np.testing.assert_array_equal(m.numpy(), stacked[..., 1:].numpy())
    _, colour_only = diff_augment_with_maps(frames, maps, u, parse_policy("brightness,contrast"))
    np.testing.assert_array_equal(colour_only.numpy(), maps.numpy())


def test_mismatched_layouts_swap_neighbours():
    x = tf.reshape(tf.range(6.0), [6, 1])
    assert mismatched(x).numpy().ravel().tolist() == [1, 0, 3, 2, 5, 4]


def _step(mismatch: float, backbone: str = "convnet", head: str = "auto") -> AdversarialStep:
    tf.keras.utils.set_random_seed(0)
    g = build_generator(SIZE, latent_dim=LATENT, width=2, condition_channels=C)
    d = build_discriminator(SIZE, backbone=backbone, weights="none", head=head, condition_channels=C)
    opt = lambda: tf.keras.optimizers.Adam(2e-4, beta_1=0.5)  # noqa: E731
    return AdversarialStep(
        g,
        d,
        opt(),
        opt(),
        4,
        LATENT,
        3,
        augment=parse_policy(DEFAULT_POLICY),
        condition="keypoints",
        keypoint_mismatch=mismatch,
    )


def test_matching_aware_term_adds_to_d_loss():
    batch = _batch(_labelled(4))
    step0 = tf.constant(0, tf.int64)
    off = {k: float(v) for k, v in _step(0.0).train_step(batch, step0).items()}
    on = {k: float(v) for k, v in _step(0.5).train_step(batch, step0).items()}
    assert "d_mismatch" not in off and 0.0 < on["d_mismatch"] < 1.0
    # same models, same batch: D's judgements of matched frames agree, its loss gains the new term
    assert on["d_real"] == pytest.approx(off["d_real"], abs=1e-6)
    assert on["d_fake"] == pytest.approx(off["d_fake"], abs=1e-6)
    expected = 0.5 * -np.log(1.0 - on["d_mismatch"])  # BCE of frames with others' key points, as fake
    assert on["d_loss"] - off["d_loss"] == pytest.approx(expected, rel=0.05)


@pytest.mark.slow
def test_projected_head_reads_heat_maps_beside_the_frozen_features():
    step = _step(0.5, "efficientnet_lite0", "projected")
    assert step._split is not None  # the frozen features run once per frame, the head sees the maps
    out = {k: float(v) for k, v in step.train_step(_batch(_labelled(4)), tf.constant(0, tf.int64)).items()}
    assert 0.0 < out["d_mismatch"] < 1.0 and np.isfinite(out["g_loss"])


# --- export, serving, generate --keypoints ------------------------------------------------------------
SERVED = 16  # the exported model's frame side: small, so the tests serve quickly


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medsynth.serving.export import export_random_generator

    path = tmp_path_factory.mktemp("cond-model") / "1"
    return export_random_generator(path, image_size=SERVED, latent_dim=8, width=2, seed=2, keypoints=True)


def _request(lf: kp.LabelledFrames) -> dict[str, np.ndarray]:
    return {"points": lf.points, "classes": lf.classes, "mask": lf.mask.astype(np.int32)}


def test_export_keeps_the_z_signatures_and_gains_a_keypoints_one(exported: Path):
    from medsynth.serving.export import MODEL_CARD, SIGNATURE_KEYPOINTS, SIGNATURE_KEYPOINTS_PNG, SIGNATURE_Z

    card = json.loads((exported / MODEL_CARD).read_text())
    assert card["condition"] == "keypoints" and card["synthetic"] is True
    assert card["keypoints"]["max_points"] == kp.MAX_POINTS and card["keypoints"]["layout_bank"] == 16
    loaded = tf.saved_model.load(str(exported))
    assert {SIGNATURE_Z, SIGNATURE_KEYPOINTS, SIGNATURE_KEYPOINTS_PNG} <= set(loaded.signatures)
    lf = _labelled(3, SERVED, seed=5)
    z = tf.random.stateless_normal([3, 8], seed=[1, 1])
    out = loaded.signatures[SIGNATURE_KEYPOINTS](z=z, **{k: tf.constant(v) for k, v in _request(lf).items()})
    assert out["images"].shape == (3, SERVED, SERVED, 1) and out["images"].dtype == tf.uint8
    assert out["png_bytes"].shape == (3,)
    # each frame is drawn for its own key points, alone: swapping the layouts swaps the frames' makers
    moved = _request(lf.take(np.array([1, 0, 2])))
    again = loaded.signatures[SIGNATURE_KEYPOINTS](z=z, **{k: tf.constant(v) for k, v in moved.items()})
    assert not np.array_equal(again["images"][0].numpy(), out["images"][0].numpy())
    np.testing.assert_array_equal(again["images"][2].numpy(), out["images"][2].numpy())
    # the z-only signature still answers: each frame for a layout of the stored bank
    assert loaded.signatures[SIGNATURE_Z](z=z)["images"].shape == (3, SERVED, SERVED, 1)


def test_local_server_answers_the_keypoints_signature_over_rest(exported: Path, tmp_path: Path):
    import http.client

    from medsynth.serving.app import ServeConfig
    from medsynth.serving.server import serve

    (tmp_path / "1").symlink_to(exported, target_is_directory=True)
    handle = serve(
        ServeConfig(
            str(tmp_path), rest_port=0, grpc_port=None, host="127.0.0.1", file_system_poll_wait_seconds=0
        )
    )
    try:
        lf = _labelled(2, SERVED, seed=5)
        inputs = {k: v.tolist() for k, v in _request(lf).items()}
        body = {"signature_name": "keypoints", "inputs": {"z": np.zeros((2, 8)).tolist(), **inputs}}
        conn = http.client.HTTPConnection("127.0.0.1", handle.rest_port, timeout=60)
        conn.request(
            "POST", "/v1/models/generator:predict", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 200, doc
        assert np.asarray(doc["outputs"]["images"]).shape == (2, SERVED, SERVED, 1)
        assert len(doc["outputs"]["png_bytes"]) == 2
        body["inputs"]["classes"] = (lf.classes + 7).tolist()  # no such class: refused, not ignored
        conn.request(
            "POST", "/v1/models/generator:predict", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 400 and "classes must be" in json.loads(resp.read())["error"]
        conn.close()
    finally:
        handle.stop()


def test_generate_keypoints_draws_a_coco_files_layouts_and_labels_them(exported: Path, tmp_path: Path):
    from medsynth.cli import main
    from medsynth.data.coco import CocoImage, read_coco, write_coco
    from medsynth.serving.app import ServeConfig
    from medsynth.serving.server import serve

    # a labelled set at another size, one frame wider than high: its points follow crop and resize
    frames = [render_frame(64, 1, i) for i in range(3)]
    entries = [
        CocoImage(f"patient-x/frame{i}.png", 64, 64, kp.FramePoints.from_dict(f.keypoints))
        for i, f in enumerate(frames)
    ]
    wide = kp.FramePoints(entries[2].points.points + np.float32([8, 0]), entries[2].points.classes)
    entries[2] = CocoImage("patient-x/wide.png", 80, 64, wide)
    source = write_coco(tmp_path / "labels.json", entries, synthetic=False, description="test labels")
    expected = [kp.follow_crop_resize(e.points, e.height, e.width, SERVED)[0] for e in entries]

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "1").symlink_to(exported, target_is_directory=True)
    handle = serve(
        ServeConfig(str(repo), rest_port=0, grpc_port=0, host="127.0.0.1", file_system_poll_wait_seconds=0)
    )
    try:
        out_rest, out_grpc = tmp_path / "rest", tmp_path / "grpc"
        ask = ["generate", "--keypoints", str(source), "--seed", "4"]
        rest = f"http://127.0.0.1:{handle.rest_port}"
        assert main([*ask, "--endpoint", rest, "--out", str(out_rest), "--max-per-request", "2"]) == 0
        assert main([*ask, "--grpc", f"127.0.0.1:{handle.grpc_port}", "--out", str(out_grpc)]) == 0
    finally:
        handle.stop()
    pngs = sorted(out_rest.glob("*.png"))
    assert len(pngs) == 3 and not any("patient" in p.name for p in pngs)  # no input name reaches outputs
    for p in pngs:
        with Image.open(p) as im:
            assert im.size == (SERVED, SERVED) and im.text["medsynth:synthetic"] == "true"
            assert "catheter_tip" in im.text["medsynth:keypoints"]
        assert p.read_bytes() == (out_grpc / p.name).read_bytes()  # same frames over either protocol
    labels = read_coco((out_rest / "annotations.json").read_bytes())
    assert labels.synthetic and not labels.problems
    assert [name for name, _ in labels.labels] == [p.name for p in pngs]
    for label, want in zip(labels.labels.values(), expected, strict=True):
        assert (label.width, label.height) == (SERVED, SERVED)
        np.testing.assert_allclose(label.points.points, want.points, atol=1e-3)
        np.testing.assert_array_equal(label.points.classes, want.classes)


# --- training through the loop (needs data sets with key points) ---------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    from medsynth.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    return str(
        prepare(PrepareConfig(source="builtin://phantom", out=str(root), image_size=SIZE, phantom_frames=48))
    )


def _cfg(data: str, out: Path, **kw) -> TrainConfig:
    base = dict(data=data, out=str(out), image_size=SIZE, steps=4, batch_size=4, seed=7, checkpoint_every=2)
    base.update(backbone="convnet", backbone_weights="none", latent_dim=LATENT, generator_width=2)
    base.update(log_every=1, condition="keypoints")
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_conditional_training_samples_checkpoints_resumes_bitwise_and_exports(dataset: str, tmp_path: Path):
    from medsynth.errors import CheckpointError
    from medsynth.serving.export import MODEL_CARD, SIGNATURE_KEYPOINTS, ExportConfig, export_run
    from medsynth.train.checkpoints import LAYOUTS_FILE, load_generator
    from medsynth.train.loop import train
    from medsynth.train.telemetry import read_history

    straight = train(_cfg(dataset, tmp_path / "runs/a/straight"))
    run = straight.run_dir
    assert (run / LAYOUTS_FILE).exists() and "d_mismatch" in read_history(run)[-1]
    with Image.open(run / "samples" / "latest.png") as grid:
        assert grid.mode == "RGB"  # the frames with their key points marked in colour
    train(_cfg(dataset, tmp_path / "runs/a/resumed", steps=2))
    resumed = train(_cfg(dataset, tmp_path / "runs/a/resumed"))
    assert resumed.metrics["steps_this_run"] == 2
    g_a, info_a = load_generator(run)
    g_b, _ = load_generator(resumed.run_dir)
    for x, y in zip(g_a.weights, g_b.weights, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())  # bitwise: feed, layouts, latents, optimizers
    assert info_a["layouts"][0].shape[1:] == (kp.MAX_POINTS, 2)
    with pytest.raises(CheckpointError, match="another model"):  # an unconditional run cannot take them
        train(_cfg(dataset, tmp_path / "runs/a/straight", steps=6, condition="none"))

    # judged against held-out labelled frames, each fake drawn for the key points of its real frame
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run

    judged = evaluate_run(EvaluateConfig(run=str(run), data=dataset, n=8, seed=0))
    assert judged["step"] == 4 and "swd" in judged and (run / "eval" / "generated.png").exists()

    model = export_run(ExportConfig(run=str(run), model_repository=str(tmp_path / "repo")))
    assert json.loads((Path(model) / MODEL_CARD).read_text())["condition"] == "keypoints"
    loaded = tf.saved_model.load(str(model))
    lf = _labelled(2)
    out = loaded.signatures[SIGNATURE_KEYPOINTS](
        z=tf.zeros([2, LATENT]), **{k: tf.constant(v) for k, v in _request(lf).items()}
    )
    expected = g_a([tf.zeros([2, LATENT]), _maps(lf)], training=False).numpy()
    served = out["images"].numpy()[..., 0] / 127.5 - 1.0
    np.testing.assert_allclose(served, expected[..., 0], atol=1.5 / 127.5)
