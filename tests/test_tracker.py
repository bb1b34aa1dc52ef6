"""The key-point tracker: metrics and decoding on hand-made cases, the loss, batches, training that
resumes bitwise, evaluation of a run, and that it learns on phantom frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from medsynth.data.geometry import Similarity
from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints, LabelledFrames, flip_lr, heatmaps
from medsynth.errors import CheckpointError, ConfigError, DataError
from medsynth.tracker.config import TrackerConfig
from medsynth.tracker.decode import decode, decode_frame
from medsynth.tracker.evaluate import evaluate_tracker, load_tracker
from medsynth.tracker.loss import heatmap_loss, targets
from medsynth.tracker.metrics import keypoint_metrics, match
from medsynth.tracker.model import build_tracker
from medsynth.tracker.train import batch_indices, make_batch, train_tracker


def fp(tip: tuple[float, float] | None, bifs: list[tuple[float, float]] = ()) -> FramePoints:
    return FramePoints.from_dict({"catheter_tip": tip, "bifurcations": [list(b) for b in bifs]})


def phantom(size: int, indices) -> LabelledFrames:
    from medsynth.data.phantom import render_frame

    frames = [render_frame(size, 0, int(i)) for i in indices]
    return LabelledFrames.from_points(
        np.stack([f.pixels for f in frames]), [FramePoints.from_dict(f.keypoints) for f in frames]
    )


# --- metrics -----------------------------------------------------------------------------------------
def test_perfect_prediction_has_no_error_and_f1_one():
    truth = [fp((10.2, 20.7), [(5, 5), (30, 40.5)]), fp((0, 63), [(50, 12)])]
    m = keypoint_metrics(truth, truth, 64)
    assert m["tip_error_mean_px"] == m["tip_error_median_px"] == m["tip_error_p95_px"] == 0.0
    assert m["tip_pck2"] == m["tip_pck5"] == 1.0
    assert (m["bif_tp"], m["bif_fp"], m["bif_fn"]) == (3, 0, 0)
    assert m["bif_precision"] == m["bif_recall"] == m["bif_f1"] == 1.0
    assert m["bif_matched_error_px"] == 0.0 and m["tip_frames"] == m["frames"] == 2


def test_known_shifts_give_known_tip_errors_and_pck():
    truth = [fp((20, 20)), fp((30, 30)), fp((40, 40)), fp(None)]  # the tipless frame does not count
    pred = [fp((23, 24)), fp((31, 30)), fp((40, 42)), fp((0, 0))]  # 5, 1, 2 px
    m = keypoint_metrics(pred, truth, 64)
    assert m["tip_frames"] == 3
    assert m["tip_error_mean_px"] == pytest.approx(8 / 3)
    assert m["tip_error_median_px"] == pytest.approx(2.0)
    assert m["tip_error_p95_px"] == pytest.approx(np.percentile([5, 1, 2], 95))
    assert m["tip_pck2"] == pytest.approx(1 / 3)  # 2 % of 64 = 1.28 px: only the 1 px error
    assert m["tip_pck5"] == pytest.approx(2 / 3)  # 5 % = 3.2 px: 1 and 2 px
    missing = keypoint_metrics([fp(None)], [fp((1, 1))], 64)  # no predicted tip: the diagonal away
    assert missing["tip_error_mean_px"] == pytest.approx(64 * np.sqrt(2))
    nothing = keypoint_metrics([fp(None)], [fp(None)], 64)
    assert nothing["tip_error_mean_px"] is None and nothing["tip_pck2"] is None
    json.dumps(nothing, allow_nan=False)  # metrics.json stays plain JSON


def test_extra_and_missing_bifurcations_give_known_precision_and_recall():
    truth = [fp((1, 1), [(10, 10), (20, 20), (30, 30)]), fp((1, 1), [(50, 50)])]
    # frame 0: two found (one 1.5 px off), one missed, two false; frame 1: one false (2.5 px > 1.92 px)
    pred = [fp((1, 1), [(10, 10), (21.5, 20), (40, 40), (5, 60)]), fp((1, 1), [(52.5, 50)])]
    m = keypoint_metrics(pred, truth, 64)
    assert m["bif_tolerance_px"] == pytest.approx(1.92)
    assert (m["bif_tp"], m["bif_fp"], m["bif_fn"]) == (2, 3, 2)
    assert m["bif_precision"] == pytest.approx(2 / 5) and m["bif_recall"] == pytest.approx(2 / 4)
    assert m["bif_f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert m["bif_matched_error_px"] == pytest.approx(0.75)
    wider = keypoint_metrics(pred, truth, 64, tolerance=0.05)  # 3.2 px: the 2.5 px one matches too
    assert (wider["bif_tp"], wider["bif_fp"], wider["bif_fn"]) == (3, 2, 1)
    empty = keypoint_metrics([fp((1, 1))], [fp((1, 1))], 64)
    assert empty["bif_precision"] == empty["bif_recall"] == empty["bif_f1"] == 1.0


def test_matching_is_optimal_one_to_one():
    # Greedy nearest-first would pair pred 0 with truth 1 (0.5 px) and leave both others unmatched.
    pred = np.array([[10.0, 0.0], [11.5, 0.0]])
    truth = np.array([[8.6, 0.0], [10.5, 0.0]])
    assert sorted(match(pred, truth, 1.5)) == pytest.approx([1.0, 1.4])
    assert len(match(pred[:1], truth, 0.1)) == 0 and len(match(pred[:0], truth, 5)) == 0


# --- decoding ----------------------------------------------------------------------------------------
def test_decode_refines_the_tip_and_suppresses_non_maxima():
    truth = fp((20.3, 30.6), [(10, 10), (13, 10), (40.4, 50.2)])
    p, c, m, _ = truth.padded()
    maps = heatmaps(p[None], c[None], m[None], 64).numpy()[0]
    found = decode_frame(maps)
    tip = found.points.points[found.points.classes == TIP]
    np.testing.assert_allclose(tip, [[20.3, 30.6]], atol=1e-3)  # exact on a Gaussian, not (20, 31)
    bif = found.points.points[found.points.classes == BIFURCATION]
    assert len(bif) == 3  # peaks 3 px apart both survive the 3x3 suppression, each once
    m = keypoint_metrics([found.points], [truth], 64)
    assert m["bif_f1"] == 1.0 and m["bif_matched_error_px"] < 1e-3
    edge = fp((0, 63.3))  # on the frame's edge the outer axis keeps the pixel centre
    maps_edge = heatmaps(*(a[None] for a in edge.padded()[:3]), 64).numpy()[0]
    np.testing.assert_allclose(decode_frame(maps_edge).points.points, [[0, 63]], atol=1e-3)
    faint = decode(maps[None] * 0.25)[0]  # every peak below the 0.3 threshold: only the tip is kept
    assert list(faint.points.classes) == [TIP] and faint.scores[0] == pytest.approx(0.25 * maps[..., 0].max())


# --- loss --------------------------------------------------------------------------------------------
def test_targets_mark_the_nearest_pixel_and_the_loss_rewards_the_truth():
    truth = [fp((5.4, 7.6), [(20, 20)]), fp(None, [(31.5, 0.2)])]
    p, c, m = (np.stack(a) for a in zip(*[f.padded()[:3] for f in truth], strict=True))
    soft, pos = targets(p, c, m, 32)
    assert pos.numpy().sum() == 3
    assert pos[0, 8, 5, TIP] == 1 and pos[0, 20, 20, BIFURCATION] == 1 and pos[1, 0, 31, BIFURCATION] == 1
    assert soft.numpy().max() <= 1.0 and float(soft[0, 20, 20, BIFURCATION]) == pytest.approx(1.0)
    good = tf.where(pos > 0, 6.0, -6.0)  # logits sure of the truth
    bad = tf.where(pos > 0, -6.0, 6.0)
    for kind in ("focal", "bce"):
        unsure = float(heatmap_loss(tf.zeros_like(good), soft, pos, kind))
        assert float(heatmap_loss(good, soft, pos, kind)) < 0.2 * unsure
        assert float(heatmap_loss(bad, soft, pos, kind)) > float(heatmap_loss(good, soft, pos, kind))
    # normalised by the points: the same frame twice costs what it costs once
    one = heatmap_loss(tf.zeros_like(good[:1]), soft[:1], pos[:1])
    two = heatmap_loss(tf.zeros_like(good[:1]), tf.concat([soft[:1]] * 2, 0), tf.concat([pos[:1]] * 2, 0))
    assert float(one) == pytest.approx(float(two), rel=1e-5)


# --- model, batches, config --------------------------------------------------------------------------
def test_model_maps_frames_to_full_resolution_logits():
    model = build_tracker(32, width=4)
    assert model(tf.zeros([2, 32, 32, 1])).shape == (2, 32, 32, 2)
    with pytest.raises(ConfigError, match="multiple of 8"):
        build_tracker(36)


def test_batch_indices_walk_epochs_deterministically():
    seen = np.concatenate([batch_indices(10, 4, 0, s, 0) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    np.testing.assert_array_equal(batch_indices(10, 4, 0, 3, 0), batch_indices(10, 4, 0, 3, 0))
    assert not np.array_equal(batch_indices(10, 4, 0, 3, 0), batch_indices(10, 4, 1, 3, 0))
    assert len(batch_indices(3, 8, 0, 7, 1)) == 8  # fewer frames than a batch


def test_batches_mix_synthetic_frames_and_flip_points_with_pixels():
    real = LabelledFrames.from_points(np.zeros((6, 32, 32), np.uint8), [fp((3, 4))] * 6)
    syn = LabelledFrames.from_points(np.full((5, 32, 32), 255, np.uint8), [fp((20, 9))] * 5, synthetic=True)
    cfg = TrackerConfig(out="unused", batch_size=8, synthetic_fraction=0.25, augment=False)
    x, points, _, mask = make_batch(cfg, real, syn, step=0)
    assert (x.reshape(8, -1).max(axis=1) == [-1] * 6 + [1] * 2).all()  # 6 real, then 2 synthetic
    assert (x[:, 0, 0, 0] == make_batch(cfg, real, None, step=0)[0][:, 0, 0, 0].max()).sum() == 6
    assert mask[:, 0].all() and not mask[:, 1:].any()
    # a frame with one bright pixel at its tip: after any flip the pixel is still at the tip
    img = np.zeros((4, 32, 32), np.uint8)
    img[:, 4, 3] = 255
    marked = LabelledFrames.from_points(img, [fp((3, 4))] * 4)
    flipped = 0
    for step in range(4):
        x, points, _, _ = make_batch(TrackerConfig(out="unused", batch_size=4), marked, None, step)
        for frame, pt in zip(x[..., 0], points[:, 0], strict=True):
            assert np.unravel_index(np.argmax(frame), frame.shape) == (round(pt[1]), round(pt[0]))
            flipped += pt[0] == 28
    assert 0 < flipped < 16


def test_similarity_moves_points_with_their_pixels():
    size = 32
    img = np.zeros((size, size), np.float32)
    img[4, 3] = 1.0  # the pixel under the point (3, 4)
    same = Similarity.about_centre(size)
    np.testing.assert_array_equal(same.warp(img), img)  # rotation 0, scale 1: the identity
    np.testing.assert_allclose(same.points(np.array([[3.0, 4.0]])), [[3.0, 4.0]])
    mirror = Similarity.about_centre(size, flip=True)
    np.testing.assert_array_equal(mirror.warp(img), img[:, ::-1])
    np.testing.assert_allclose(mirror.points(np.array([[3.0, 4.0]])), flip_lr(np.array([[3.0, 4.0]]), size))
    quarter = Similarity.about_centre(size, angle_deg=90.0)  # pixel centres onto pixel centres
    (x, y), = quarter.points(np.array([[3.0, 4.0]]))
    assert np.unravel_index(np.argmax(quarter.warp(img)), img.shape) == (round(y), round(x))
    assert (round(x), round(y)) == (27, 3)  # (x, y) → (S-1-y, x) about the centre


def _blobs(centres: list[tuple[float, float]], size: int = 32) -> LabelledFrames:
    """Frames with one Gaussian blob under each tip (and a corner bifurcation), half-bright."""
    frames = [fp(c, [(0.0, 0.0)]) for c in centres]
    p, c, m = (np.stack(a) for a in zip(*[f.padded()[:3] for f in frames], strict=True))
    maps = heatmaps(p, c, m, size).numpy()[..., TIP]
    return LabelledFrames.from_points(np.rint(maps * 127).astype(np.uint8), frames)


def test_classic_augmentation_keeps_key_points_on_their_pixels_and_masks_those_that_leave():
    marked = _blobs([(10.0, 13.0), (20.0, 8.0), (15.0, 22.0), (6.0, 25.0)])
    cfg = TrackerConfig(out="unused", batch_size=4, rotate_deg=15.0, scale=0.1, gamma=0.3)
    plain = TrackerConfig(out="unused", batch_size=4)
    moved = masked = 0
    for step in range(6):
        x, points, _, mask = make_batch(cfg, marked, None, step)
        flips_only = make_batch(plain, marked, None, step)[1]
        for frame, pt in zip(x[..., 0], points[:, 0], strict=True):
            r, c = np.unravel_index(np.argmax(frame), frame.shape)
            assert abs(c - pt[0]) <= 1 and abs(r - pt[1]) <= 1  # the blob's peak is at the moved tip
        moved += int((np.abs(points[:, 0] - flips_only[:, 0]) > 0.1).any(axis=1).sum())
        corner = FramePoints(points[:, 1], np.ones(4, np.int32)).inside(32)
        assert (mask[:, 1] == corner).all()  # the corner bifurcation: masked exactly when it left
        masked += int((~mask[:, 1]).sum())
    assert moved >= 20 and 0 < masked < 24  # the frames turned; some corner points left the frame


def test_pretraining_steps_take_the_second_source_alone_then_the_real_frames_alone():
    real = LabelledFrames.from_points(np.zeros((6, 32, 32), np.uint8), [fp((3, 4))] * 6)
    syn = LabelledFrames.from_points(np.full((5, 32, 32), 255, np.uint8), [fp((20, 9))] * 5, synthetic=True)
    cfg = TrackerConfig(out="unused", steps=4, batch_size=8, pretrain_steps=2, augment=False)
    brightest = [make_batch(cfg, real, syn, step)[0].reshape(8, -1).max(axis=1) for step in range(4)]
    assert [set(b.tolist()) for b in brightest] == [{1.0}, {1.0}, {-1.0}, {-1.0}]
    with pytest.raises(ConfigError, match="--pretrain-steps must be in 0 .. --steps - 1"):
        TrackerConfig(out="x", steps=4, pretrain_steps=4)
    with pytest.raises(DataError, match="--pretrain-steps pre-trains on the second source"):
        train_tracker(cfg, real)


def test_pseudo_labels_keep_the_confident_frames_and_the_generator_layouts_every_frame(tmp_path):
    from medsynth.tracker.pseudo import pseudo_label

    real, val = phantom(32, range(12)), phantom(32, range(200, 206))
    run = tmp_path / "teacher"
    train_tracker(TrackerConfig(out=str(run), steps=2, **TINY), real, val=val)
    sure, unsure = pseudo_label(run, val.images, confidence=0.01), pseudo_label(run, val.images, 0.99)
    assert len(sure.frames) == len(val) and not sure.frames.synthetic
    np.testing.assert_array_equal(sure.frames.images, val.images)
    np.testing.assert_array_equal(sure.tip_scores, unsure.tip_scores)
    assert sure.confident.all() and len(sure.kept()) == len(val)
    assert not unsure.confident.any() and len(unsure.kept()) == 0
    # a layout for every frame, with a tip only where the tracker was sure of it
    assert all(TIP in f.classes for f in sure.layouts())
    assert len(unsure.layouts()) == len(val) and not any(TIP in f.classes for f in unsure.layouts())
    with pytest.raises(ConfigError, match="confidence must be in"):
        pseudo_label(run, val.images, confidence=1.0)


def test_config_and_data_errors_name_the_input():
    with pytest.raises(ConfigError, match="--synthetic-fraction"):
        TrackerConfig(out="x", synthetic_fraction=1.5)
    with pytest.raises(ConfigError, match="--loss"):
        TrackerConfig(out="x", loss="l2")
    with pytest.raises(ConfigError, match="local runs only"):
        TrackerConfig(out="gs://bucket/run")
    real = LabelledFrames.from_points(np.zeros((2, 32, 32), np.uint8), [fp((3, 4))] * 2)
    other = LabelledFrames.from_points(np.zeros((2, 64, 64), np.uint8), [fp((3, 4))] * 2)
    with pytest.raises(DataError, match="validation frames are 64 px"):
        train_tracker(TrackerConfig(out="x"), real, val=other)
    with pytest.raises(DataError, match="no real labelled frames"):
        train_tracker(TrackerConfig(out="x"), real.take(np.arange(0)))
    with pytest.raises(CheckpointError, match="not a tracker run"):
        load_tracker("/nonexistent/run")


# --- training -----------------------------------------------------------------------------------------
TINY = {"batch_size": 4, "width": 4, "log_every": 1, "checkpoint_every": 2, "seed": 5}


def _weights(run) -> list[np.ndarray]:
    model, _, _ = load_tracker(run)
    return [v.numpy() for v in model.variables]


def test_training_resumes_bitwise_and_writes_its_files(tmp_path):
    real, syn, val = phantom(32, range(12)), phantom(32, range(100, 108)), phantom(32, range(200, 206))
    syn.synthetic = True
    straight = train_tracker(TrackerConfig(out=str(tmp_path / "a"), steps=4, **TINY), real, syn, val)
    train_tracker(TrackerConfig(out=str(tmp_path / "b"), steps=2, **TINY), real, syn, val)
    resumed = train_tracker(TrackerConfig(out=str(tmp_path / "b"), steps=4, **TINY), real, syn, val)
    for a, b in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["steps_this_run"] == 2 and straight["steps_this_run"] == 4
    same = ("final_loss", "val_tip_error_mean_px", "val_bif_f1")
    assert {k: resumed[k] for k in same} == {k: straight[k] for k in same}
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    assert history == json.loads((tmp_path / "a" / "history.json").read_text())
    run = tmp_path / "a"
    for name in ("config.json", "metrics.json", "loss.png", "predictions.png"):
        assert (run / name).exists(), name
    saved = json.loads((run / "config.json").read_text())
    assert (saved["kind"], saved["image_size"], saved["real_frames"], saved["synthetic_per_batch"]) == (
        "tracker",
        32,
        12,
        2,
    )
    assert sorted(p.name for p in (run / "checkpoints").glob("*.index")) == ["ckpt-2.index", "ckpt-4.index"]
    # evaluating the run on the validation frames gives what training reported
    evaluated = evaluate_tracker(run, val)
    assert evaluated["step"] == 4
    assert {k: evaluated[k] for k in ("tip_error_mean_px", "bif_f1")} == {
        "tip_error_mean_px": straight["val_tip_error_mean_px"],
        "bif_f1": straight["val_bif_f1"],
    }
    with pytest.raises(DataError, match="trained on 32 px"):
        evaluate_tracker(run, phantom(64, [0]))
    # a finished run does nothing more and keeps its metrics
    again = train_tracker(TrackerConfig(out=str(run), steps=4, **TINY), real, syn, val)
    assert again == straight


def test_the_tracker_learns_on_phantom_frames(tmp_path):
    # 4 frames of each of 40 patients to learn from, one frame of each of 32 others to judge
    real = phantom(64, [16 * p + k for p in range(40) for k in (0, 4, 8, 12)])
    val = phantom(64, [16 * p + p % 16 for p in range(40, 72)])
    cfg = TrackerConfig(out=str(tmp_path / "run"), steps=200, batch_size=8, checkpoint_every=1000)
    m = train_tracker(cfg, real, val=val)
    # the baseline: every tip where the training tips are on average
    tips = real.points[:, 0][real.mask[:, 0] & (real.classes[:, 0] == TIP)]
    truth = val.points[:, 0][val.mask[:, 0] & (val.classes[:, 0] == TIP)]
    baseline = np.median(np.linalg.norm(truth - tips.mean(axis=0), axis=1))
    assert m["val_tip_error_median_px"] < 0.3 * baseline
    assert m["val_tip_pck5"] > 0.6
    assert m["val_bif_f1"] > 0.3


# --- command line ------------------------------------------------------------------------------------
def test_tracker_commands_train_resume_and_evaluate_on_a_prepared_data_set(tmp_path, capsys):
    from medsynth.cli import main

    prepare = f"prepare builtin://phantom --out {tmp_path}/store --image-size 32 --phantom-frames 160"
    assert main([*prepare.split(), "--val-fraction", "0.2"]) == 0
    data = capsys.readouterr().out.split("dataset ready: ")[1].strip()
    assert main(f"phantom --out {tmp_path}/syn -n 6 --size 64".split()) == 0  # read back at 32 px
    run = tmp_path / "run"
    train = f"tracker train --data {data} --synthetic {tmp_path}/syn --n-real 20 --out {run} --batch-size 4"
    train += " --width 4 --checkpoint-every 2 --steps"
    assert main([*train.split(), "2"]) == 0
    assert main([*train.split(), "3"]) == 0  # resumes at step 2
    out = capsys.readouterr().out
    assert f"tracker trained: {run} (step 3)" in out and "steps_this_run: 1" in out
    saved = json.loads((run / "config.json").read_text())
    assert (saved["real_frames"], saved["synthetic_frames"], saved["synthetic_per_batch"]) == (20, 6, 2)
    assert saved["source"]["n_real"] == 20 and saved["val_frames"] > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert main(f"tracker evaluate --run {run} --data {data}".split()) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert printed["step"] == "3" and float(printed["bif_f1"]) == pytest.approx(metrics["val_bif_f1"])
    # bad input: one line, exit 2
    assert main(f"tracker evaluate --run {tmp_path}/nothing --data {data}".split()) == 2
    assert "is not a tracker run" in capsys.readouterr().err
    assert main(f"tracker train --data {data} --out {tmp_path}/r2 --synthetic-fraction 2".split()) == 2
    assert "--synthetic-fraction" in capsys.readouterr().err
