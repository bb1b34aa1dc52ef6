"""Key points through the data path: phantom and COCO labels → prepare (crop/resize, quarantine) →
shards → make_dataset / labelled_frames, labelled subsets, and shards from before key points."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medsynth import storage
from medsynth.data.coco import CocoImage, write_coco
from medsynth.data.dicom import read_dicom
from medsynth.data.images import quantise, read_image
from medsynth.data.input import Augment, augment_batch, labelled_frames, load_manifest, make_dataset
from medsynth.data.keypoints import MAX_POINTS, TIP, FramePoints, flip_lr, follow_crop_resize, heatmaps
from medsynth.data.phantom import render_frame, write_phantom
from medsynth.data.prepare import PrepareConfig, prepare
from medsynth.data.shards import read_records, sha256_file, verify
from medsynth.data.subset import write_labelled_subset
from medsynth.errors import DataError

SIZE = 32
NO_AUG = dict(flip_lr=0.0, flip_ud=0.0, rotate_deg=0.0, brightness=0.0, contrast=0.0, noise_std=0.0)


def records(ds: Path, split: str | None = None) -> list:
    m = load_manifest(ds)
    return [r for s in m["shards"] if split in (None, s["split"]) for r in read_records(ds / s["file"])]


def phantom_points(size: int, seed: int, index: int) -> FramePoints:
    p = FramePoints.from_dict(render_frame(size, seed, index).keypoints)
    return p.keep(p.inside(size))


def assert_points(got: FramePoints | None, want: FramePoints, atol: float = 2e-3) -> None:
    assert got is not None
    np.testing.assert_array_equal(got.classes, want.classes)
    np.testing.assert_allclose(got.points, want.points, atol=atol)


def prep(source, out, **kw) -> Path:
    return prepare(PrepareConfig(source=str(source), out=str(out), image_size=SIZE, workers=1, **kw))


@pytest.fixture(scope="module")
def phantom_ds(tmp_path_factory) -> Path:
    """builtin://phantom at 32 px: every frame labelled by the phantom itself."""
    out = tmp_path_factory.mktemp("builtin")
    return prep("builtin://phantom", out, phantom_frames=48, val_fraction=0.34)


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("png") / "src", n=16, size=64, seed=1)


def test_builtin_phantom_labels(phantom_ds):
    m = load_manifest(phantom_ds)
    kp = m["keypoints"]
    assert m["format"] == 2 and kp["classes"] == ["catheter_tip", "bifurcation"]
    assert kp["labelled_frames"] == {s: m["splits"][s]["frames"] for s in ("train", "val")}
    assert kp["points"]["catheter_tip"] == 48 and kp["quarantined_labels"] == 0
    for r in records(phantom_ds):
        assert_points(r.keypoints, phantom_points(SIZE, 0, r.loop * 8 + r.frame), atol=0)


def test_phantom_png_files_and_coco_give_the_phantoms_own_labels(png_folder, tmp_path):
    """phantom (64 px PNG + annotations.json) → prepare at 32 px: the phantom's key points, resized."""
    ds = prep(png_folder, tmp_path)
    m = load_manifest(ds)
    assert m["frames"] == 16 and m["quarantined"] == 0
    assert sum(m["keypoints"]["labelled_frames"].values()) == 16
    assert m["source"]["label_files"] == 1
    assert m["source"]["skipped_sidecar_files"] == 18  # per-frame JSON, phantom.json, _COMPLETE
    assert m["keypoints"]["label_files"][0].startswith("input-")
    expected = {}
    for i in range(16):
        pixels = quantise(
            read_image((png_folder / f"frame_{i:05d}.png").read_bytes(), SIZE, 1 << 30).frames, np.uint8
        )
        expected[pixels[0].tobytes()] = follow_crop_resize(phantom_points(64, 1, i), 64, 64, SIZE)[0]
    recs = records(ds)
    assert len(recs) == 16
    for r in recs:
        assert_points(r.keypoints, expected[r.image.tobytes()])
    # The same folder as a zip: the label file inside the archive is found too.
    archive = tmp_path / "src.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(png_folder.iterdir()):
            zf.write(p, f"export/{p.name}")
    dz = load_manifest(prep(archive, tmp_path / "z"))  # one folder: one patient, all in train
    assert dz["keypoints"]["labelled_frames"] == {"train": 16, "val": 0}
    assert dz["keypoints"]["points"] == m["keypoints"]["points"] and dz["source"]["label_files"] == 1


def test_gcs_prefix_with_labels(gcs_bucket, png_folder, tmp_path):
    storage.upload_dir(png_folder, f"{gcs_bucket}/incoming")
    ds = prep(f"{gcs_bucket}/incoming", tmp_path)
    m = load_manifest(ds)
    assert m["source"]["scheme"] == "gs" and sum(m["keypoints"]["labelled_frames"].values()) == 16


def test_non_square_frames_crop_and_drop(png_folder, tmp_path):
    """64 wide x 24 high frames: the centre crop cuts 20 columns each side; points there are dropped and
    counted, the others follow the crop and the 24 → 32 resize."""
    src = tmp_path / "wide"
    src.mkdir()
    images, want, dropped = [], {}, 0
    for i in range(16):
        pixels = np.asarray(Image.open(png_folder / f"frame_{i:05d}.png"))[16:40, :]
        Image.fromarray(pixels).save(src / f"w{i:02d}.png")
        pts = phantom_points(64, 1, i)
        pts = FramePoints(pts.points - np.float32([0, 16]), pts.classes)
        pts = pts.keep(np.all((pts.points >= -0.5) & (pts.points <= [63.5, 23.5]), axis=1))
        images.append(CocoImage(f"w{i:02d}.png", 64, 24, pts))
        moved, lost = follow_crop_resize(pts, 24, 64, SIZE)
        dropped += lost
        stored = quantise(read_image((src / f"w{i:02d}.png").read_bytes(), SIZE, 1 << 30).frames, np.uint8)
        want[stored[0].tobytes()] = moved
    write_coco(src / "labels.json", images, synthetic=False, description="cropped phantom")
    ds = prep(src, tmp_path / "out")
    m = load_manifest(ds)
    assert dropped > 0 and m["keypoints"]["dropped_outside_crop"] == dropped
    assert m["quarantined"] == 0
    for r in records(ds):
        assert_points(r.keypoints, want[r.image.tobytes()])
        assert np.all(r.keypoints.inside(SIZE))


def test_multi_frame_dicom_per_frame(tmp_path):
    src = write_phantom(tmp_path / "dcm", n=20, size=64, seed=4, fmt="dicom")
    ds = prep(src, tmp_path / "out")
    m = load_manifest(ds)
    assert m["frames"] == 20 and sum(m["keypoints"]["labelled_frames"].values()) == 20
    want = {}
    for loop, first in ((0, 0), (1, 8), (2, 16)):
        frames = read_dicom((src / f"loop_{loop:05d}.dcm").read_bytes(), SIZE, 1 << 30).frames
        for k, pixels in enumerate(quantise(frames, np.uint8)):
            want[pixels.tobytes()] = (
                k,
                follow_crop_resize(phantom_points(64, 4, first + k), 64, 64, SIZE)[0],
            )
    for r in records(ds):
        frame, points = want[r.image.tobytes()]
        assert r.frame == frame
        assert_points(r.keypoints, points)


def _png(path: Path, h: int, w: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w)).astype(np.uint8)).save(path)


def test_bad_labels_are_quarantined_and_frames_kept(tmp_path):
    src = tmp_path / "ZQXDOE_JOHN"  # a file name with PHI: it must not reach the outputs
    for i in range(6):
        _png(src / f"ZQXDOE_{i}.png", 20, 30, i)
    pages = [Image.fromarray(np.full((16, 16), 40 * k, np.uint8)) for k in range(3)]
    pages[0].save(src / "ZQXDOE_loop.tif", save_all=True, append_images=pages[1:])
    tip = FramePoints(np.float32([[5, 5]]), np.int32([TIP]))
    write_coco(
        src / "ZQXDOE_labels.json",
        [
            CocoImage("ZQXDOE_0.png", 30, 20, tip),  # good
            CocoImage("ZQXDOE_1.png", 30, 20, FramePoints.empty()),  # good: labelled, no point
            CocoImage("ZQXDOE_missing.png", 30, 20, tip),  # unknown image
            CocoImage("ZQXDOE_2.png", 30, 20, FramePoints(np.float32([[29.6, 3]]), np.int32([TIP]))),  # out
            CocoImage("ZQXDOE_3.png", 30, 30, tip),  # declared size is not the file's
            CocoImage("ZQXDOE_loop.tif", 16, 16, tip, frame=1),  # good
            CocoImage("ZQXDOE_loop.tif", 16, 16, tip, frame=5),  # past the last frame
            CocoImage("ZQXDOE_4.png", 30, 20, tip),  # labelled twice, differently (below)
        ],
        synthetic=False,
        description="ZQXDOE labels",
    )
    write_coco(src / "sub" / "more.json", [CocoImage("../ZQXDOE_4.png", 30, 20, FramePoints.empty())],
               synthetic=False, description="")  # fmt: skip
    (src / "broken.json").write_text('{"images": [{"file_name": "ZQXDOE_5.png"}], "annotations": [')
    (src / "notes.json").write_text('{"ZQXDOE": 1}')  # not COCO: a side-car file
    ds = prep(src, tmp_path / "out", min_frames=1)
    m = load_manifest(ds)
    assert m["frames"] == 9  # every frame kept, labelled or not
    assert sum(m["keypoints"]["labelled_frames"].values()) == 3
    assert m["source"]["label_files"] == 3 and m["source"]["skipped_sidecar_files"] == 1
    q = json.loads((ds / "quarantine.json").read_text())
    labels = [e for e in q["entries"] if e["stage"] == "labels"]
    assert len(labels) == m["keypoints"]["quarantined_labels"] == 7 == q["count"] == m["quarantined"]
    text = " | ".join(e["reason"] for e in labels)
    for expected in (
        "unknown image",
        "outside the 30x20 image",
        "declared size 30x30 is not the file's 30x20",
        "frame 5 is past the file's 3 frames",
        "labelled more than once",
        "malformed JSON",
    ):
        assert expected in text, expected
    assert text.count("labelled more than once") == 2
    assert all(e["name"].startswith("input-") for e in labels)
    for p in (ds / "manifest.json", ds / "quarantine.json"):
        assert "ZQXDOE" not in p.read_text()
    by_image = {r.image.tobytes(): r.keypoints for r in records(ds)}
    tif = quantise(read_image((src / "ZQXDOE_loop.tif").read_bytes(), SIZE, 1 << 30).frames, np.uint8)
    assert by_image[tif[1].tobytes()] is not None and by_image[tif[0].tobytes()] is None
    # Changing a label makes a new data set; the patient split stays the same.
    write_coco(src / "sub" / "more.json", [CocoImage("../ZQXDOE_4.png", 30, 20, tip)], synthetic=False,
               description="")  # fmt: skip
    again = prep(src, tmp_path / "out", min_frames=1)
    assert again != ds and load_manifest(again)["splits"] == m["splits"]
    assert sum(load_manifest(again)["keypoints"]["labelled_frames"].values()) == 4


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_make_dataset_with_keypoints(phantom_ds, cache):
    kw = dict(batch_size=8, shuffle=False, repeat=False, cache=cache, keypoints=True)
    batches = list(make_dataset(phantom_ds, **kw))
    x, points, classes, mask = batches[0]
    assert x.shape == (8, SIZE, SIZE, 1) and x.dtype == tf.float32
    assert points.shape == (8, MAX_POINTS, 2) and points.dtype == tf.float32
    assert classes.dtype == tf.int32 and mask.dtype == tf.bool and mask.shape == (8, MAX_POINTS)
    recs = records(phantom_ds, "train")
    for b, (x, points, classes, mask) in enumerate(batches):
        for j in range(8):
            r = recs[8 * b + j]
            np.testing.assert_array_equal(np.rint((x[j, ..., 0].numpy() + 1) * 127.5), r.image)
            assert_points(FramePoints.from_padded(points[j], classes[j], mask[j]), r.keypoints, atol=0)
    # Images alone are what they were without key points.
    plain = list(make_dataset(phantom_ds, batch_size=8, shuffle=False, repeat=False, cache=cache))
    assert all(np.array_equal(p, b[0]) for p, b in zip(plain, batches, strict=True))
    # Deterministic per seed, augmentation included.
    aug = dict(batch_size=8, seed=3, augment=True, cache=cache, keypoints=True)
    a = [tuple(t.numpy() for t in b) for b in make_dataset(phantom_ds, **aug).take(4)]
    c = [tuple(t.numpy() for t in b) for b in make_dataset(phantom_ds, **aug).take(4)]
    assert all(np.array_equal(u, v) for ba, bc in zip(a, c, strict=True) for u, v in zip(ba, bc, strict=True))


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_flips_move_points_with_pixels(phantom_ds, cache):
    kw = dict(batch_size=8, shuffle=False, repeat=False, cache=cache, keypoints=True)
    base = next(iter(make_dataset(phantom_ds, augment=Augment(**NO_AUG), **kw)))
    lr = next(iter(make_dataset(phantom_ds, augment=Augment(**(NO_AUG | {"flip_lr": 1.0})), **kw)))
    ud = next(iter(make_dataset(phantom_ds, augment=Augment(**(NO_AUG | {"flip_ud": 1.0})), **kw)))
    x0, p0, c0, m0 = (t.numpy() for t in base)
    np.testing.assert_array_equal(lr[0].numpy(), x0[:, :, ::-1])
    np.testing.assert_allclose(lr[1].numpy(), flip_lr(p0, SIZE))
    np.testing.assert_array_equal(ud[0].numpy(), x0[:, ::-1])
    np.testing.assert_allclose(ud[1].numpy(), p0 * [1, -1] + [0, SIZE - 1])
    assert np.array_equal(lr[3].numpy(), m0) and np.array_equal(lr[2].numpy(), c0)
    # The heat-map peak of the flipped tip is the mirror of the original peak, and the pixel under it is
    # the same pixel of the (mirrored) image.
    before = heatmaps(p0, c0, m0, SIZE).numpy()[..., TIP]
    after = heatmaps(lr[1], lr[2], lr[3], SIZE).numpy()[..., TIP]
    for j in range(8):
        r0, col0 = np.unravel_index(before[j].argmax(), before[j].shape)
        r1, col1 = np.unravel_index(after[j].argmax(), after[j].shape)
        assert (r1, col1) == (r0, SIZE - 1 - col0)
        assert lr[0].numpy()[j, r1, col1, 0] == x0[j, r0, col0, 0]


def test_rotation_turns_points_with_pixels():
    """A bright blob at a key point: after rotation, the blob's centre is where the point went."""
    size = 32
    yy, xx = np.mgrid[:size, :size]
    pts = np.float32([[[20.0, 9.0]], [[8.5, 22.0]], [[16.0, 15.5]], [[27.0, 25.0]]])
    x = np.stack([np.exp(-((xx - p[0, 0]) ** 2 + (yy - p[0, 1]) ** 2) / 3.0) for p in pts]) * 2 - 1
    params = Augment(**(NO_AUG | {"rotate_deg": 25.0}))
    mask = np.ones((4, 1), bool)
    y, moved, m = augment_batch(tf.constant(x[..., None], tf.float32), tf.constant([5, 6], tf.int64), params,
                                tf.constant(pts), tf.constant(mask))  # fmt: skip
    same = augment_batch(tf.constant(x[..., None], tf.float32), tf.constant([5, 6], tf.int64), params)
    np.testing.assert_array_equal(same.numpy(), y.numpy())  # the image does not depend on the points
    assert not np.allclose(moved.numpy(), pts)
    for j in range(4):
        img = (y.numpy()[j, ..., 0] + 1) / 2
        w = np.where(img > 0.3, img, 0)
        centre = np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()
        if m.numpy()[j, 0]:
            np.testing.assert_allclose(centre, moved.numpy()[j, 0], atol=0.35)


@pytest.fixture(scope="module")
def partial_ds(png_folder, tmp_path_factory) -> Path:
    """The phantom PNGs with only frames 0-5 and 10 labelled."""
    src = tmp_path_factory.mktemp("partial") / "src"
    shutil.copytree(png_folder, src)
    keep = [0, 1, 2, 3, 4, 5, 10]
    images = [CocoImage(f"frame_{i:05d}.png", 64, 64, phantom_points(64, 1, i)) for i in keep]
    write_coco(src / "annotations.json", images, synthetic=True, description="partial")
    return prep(src, src.parent / "out", val_fraction=0.0)


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_labelled_only(partial_ds, cache):
    m = load_manifest(partial_ds)
    assert m["keypoints"]["labelled_frames"] == {"train": 7, "val": 0} and m["frames"] == 16
    labelled = {r.image.tobytes() for r in records(partial_ds) if r.keypoints is not None}
    kw = dict(batch_size=7, shuffle=False, repeat=False, cache=cache, labelled_only=True)
    (x,) = list(make_dataset(partial_ds, **kw))
    assert {np.rint((f[..., 0] + 1) * 127.5).astype(np.uint8).tobytes() for f in x.numpy()} == labelled
    x, _, _, mask = next(iter(make_dataset(partial_ds, **kw, keypoints=True)))
    assert mask.numpy().any(axis=1).all()
    with pytest.raises(DataError, match="no val frames"):
        make_dataset(partial_ds, "val", labelled_only=True)
    # All frames still stream without labelled_only (the GAN uses them).
    assert len(list(make_dataset(partial_ds, batch_size=16, shuffle=False, repeat=False, cache=cache))) == 1


def test_labelled_frames(phantom_ds, partial_ds):
    val = labelled_frames(phantom_ds, "val")
    recs = records(phantom_ds, "val")
    assert len(val) == len(recs) and val.synthetic is True and val.images.dtype == np.uint8
    for i, r in enumerate(recs):
        np.testing.assert_array_equal(val.images[i], r.image)
        assert_points(val.frame_points(i), r.keypoints, atol=0)
    some = labelled_frames(phantom_ds, "train", n=5, seed=1)
    again = labelled_frames(phantom_ds, "train", n=5, seed=1)
    assert len(some) == 5 and np.array_equal(some.images, again.images)
    assert not np.array_equal(some.images, labelled_frames(phantom_ds, "train", n=5, seed=2).images)
    assert len(labelled_frames(partial_ds, "train")) == 7
    with pytest.raises(DataError, match="7 labelled train frames; 8 were asked"):
        labelled_frames(partial_ds, "train", n=8)
    with pytest.raises(DataError, match="no val frames"):
        labelled_frames(partial_ds, "val")


def test_labelled_subset_isolation(phantom_ds, tmp_path):
    parent = load_manifest(phantom_ds)
    sub = write_labelled_subset(phantom_ds, 6, seed=2, out=tmp_path)
    m = load_manifest(sub)
    assert m["subset"]["parent"] == parent["hash"] and m["subset"]["n"] == 6 and m["subset"]["seed"] == 2
    assert m["synthetic"] == parent["synthetic"] and m["image_size"] == SIZE and m["hash"] == sub.name
    assert verify(sub, m) == [] and all(sha256_file(sub / s["file"]) == s["sha256"] for s in m["shards"])
    parent_train = records(phantom_ds, "train")
    train = records(sub, "train")
    assert len(train) == 6 == m["splits"]["train"]["frames"] == m["keypoints"]["labelled_frames"]["train"]
    for r, i in zip(train, m["subset"]["train_indices"], strict=True):
        p = parent_train[i]
        assert np.array_equal(r.image, p.image) and (r.patient, r.loop, r.frame) == (
            p.patient,
            p.loop,
            p.frame,
        )
        assert_points(r.keypoints, p.keypoints, atol=0)
    val, parent_val = records(sub, "val"), records(phantom_ds, "val")
    assert len(val) == len(parent_val) == m["splits"]["val"]["frames"]
    for r, p in zip(val, parent_val, strict=True):
        assert np.array_equal(r.image, p.image) and r.patient == p.patient
        assert_points(r.keypoints, p.keypoints, atol=0)
    assert not set(m["splits"]["train"]["patients"]) & set(m["splits"]["val"]["patients"])
    # Reused when it exists; another seed takes other frames.
    mtime = os.stat(sub / "manifest.json").st_mtime_ns
    assert write_labelled_subset(phantom_ds, 6, seed=2, out=tmp_path) == sub
    assert os.stat(sub / "manifest.json").st_mtime_ns == mtime
    other = write_labelled_subset(phantom_ds, 6, seed=3, out=tmp_path)
    assert other != sub and load_manifest(other)["subset"]["train_indices"] != m["subset"]["train_indices"]
    batch = next(iter(make_dataset(sub, batch_size=4, keypoints=True, labelled_only=True)))
    assert batch[0].shape == (4, SIZE, SIZE, 1)
    with pytest.raises(DataError, match="fewer than the 1000"):
        write_labelled_subset(phantom_ds, 1000, seed=0, out=tmp_path)


def test_shards_from_before_keypoints_read_as_unlabelled(phantom_ds, tmp_path):
    """Format-1 shards (no kp_* features, no keypoints section): images as before, no labels."""
    old = tmp_path / "old"
    shutil.copytree(phantom_ds, old)
    m = load_manifest(old)
    for shard in m["shards"]:
        path = old / shard["file"]
        examples = [
            tf.train.Example.FromString(s) for s in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
        ]
        with tf.io.TFRecordWriter(str(path)) as w:
            for ex in examples:
                for k in ("kp_xy", "kp_class", "labelled"):
                    del ex.features.feature[k]
                w.write(ex.SerializeToString())
        shard["sha256"] = sha256_file(path)
    del m["keypoints"]
    m["format"] = 1
    (old / "manifest.json").write_text(json.dumps(m))
    assert all(r.keypoints is None for r in records(old))
    for cache in (True, False):
        kw = dict(batch_size=8, shuffle=False, repeat=False, cache=cache)
        x, _, _, mask = next(iter(make_dataset(old, keypoints=True, **kw)))
        assert not mask.numpy().any()
        np.testing.assert_array_equal(x.numpy(), next(iter(make_dataset(phantom_ds, **kw))).numpy())
    with pytest.raises(DataError, match="no labelled train frames"):
        make_dataset(old, labelled_only=True)
    with pytest.raises(DataError, match="no labelled val frames"):
        labelled_frames(old)


def test_phantom_writes_coco_annotations(tmp_path):
    out = write_phantom(tmp_path / "d", n=10, size=32, seed=5, fmt="dicom")
    d = json.loads((out / "annotations.json").read_text())
    assert d["info"]["synthetic"] is True
    assert [(im["file_name"], im["frame"]) for im in d["images"]] == [
        ("loop_00000.dcm", k) for k in range(8)
    ] + [("loop_00001.dcm", 0), ("loop_00001.dcm", 1)]
    tips = [a["keypoints"][:2] for a in d["annotations"] if a["category_id"] == 1]
    assert tips[9] == render_frame(32, 5, 9).keypoints["catheter_tip"]
    buf = io.BytesIO((out / "annotations.json").read_bytes())
    assert buf.getvalue().endswith(b"\n")
