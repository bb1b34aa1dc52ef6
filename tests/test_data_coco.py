"""COCO Keypoints both ways: our writer's layout, reading what CVAT / Label Studio export, and every
reason a label is quarantined instead of used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medsynth.data.coco import (
    CATEGORIES,
    CocoImage,
    looks_like_coco,
    read_coco,
    read_labelled_folder,
    resolve,
    to_coco,
    write_coco,
)
from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints, follow_crop_resize
from medsynth.data.phantom import render_frame, write_phantom
from medsynth.errors import DataError


def fp(tip=None, bifs=()) -> FramePoints:
    return FramePoints.from_dict({"catheter_tip": tip, "bifurcations": list(bifs)})


def doc(images, annotations, categories=None) -> bytes:
    cats = categories if categories is not None else CATEGORIES
    return json.dumps({"images": images, "annotations": annotations, "categories": cats}).encode()


def test_round_trip_and_layout(tmp_path):
    images = [
        CocoImage("a/f0.png", 64, 48, fp([3.14159, 2.0], [[10.0, 11.5], [-0.5, 47.5]])),
        CocoImage("loop.dcm", 32, 32, fp(None, [[1.0, 2.0]]), frame=3),
        CocoImage("empty.png", 16, 16, FramePoints.empty()),
    ]
    path = write_coco(tmp_path / "sub" / "annotations.json", images, synthetic=True, description="test")
    d = json.loads(path.read_text())
    assert d["categories"] == [
        {"id": 1, "name": "catheter", "keypoints": ["catheter_tip"], "skeleton": []},
        {"id": 2, "name": "vessel", "keypoints": ["bifurcation"], "skeleton": []},
    ]
    assert d["info"]["synthetic"] is True and "pixel centres at integers" in d["info"]["keypoint_convention"]
    assert [im.get("frame") for im in d["images"]] == [None, 3, None]
    assert "frame" not in d["images"][0]
    ann = d["annotations"][0]
    assert ann["keypoints"] == [3.142, 2.0, 2] and ann["num_keypoints"] == 1 and ann["iscrowd"] == 0
    assert ann["category_id"] == 1 and ann["area"] == ann["bbox"][2] * ann["bbox"][3] > 0
    assert len(d["annotations"]) == 4 and len({a["id"] for a in d["annotations"]}) == 4
    assert not list(tmp_path.rglob("*.tmp"))  # written atomically

    back = read_coco(path.read_bytes())
    assert back.problems == [] and back.synthetic is True and not back.malformed
    assert set(back.labels) == {("a/f0.png", None), ("loop.dcm", 3), ("empty.png", None)}
    for im in images:
        got = back.points[(im.file_name, im.frame)]
        np.testing.assert_allclose(got.points, np.round(im.points.points, 3), atol=1e-4)
        np.testing.assert_array_equal(got.classes, im.points.classes)
    assert len(back.points[("empty.png", None)]) == 0  # labelled, with no point in view
    assert back.labels[("a/f0.png", None)].width == 64 and back.labels[("a/f0.png", None)].height == 48
    assert (
        read_coco(json.dumps(to_coco(images, synthetic=False, description="x")).encode()).synthetic is False
    )


def test_cvat_and_label_studio_exports():
    """A skeleton category (several points per annotation, v=0 unlabelled), a one-label category with no
    keypoint names (Label Studio), and names that are not ours (ignored, counted)."""
    cats = [
        {"id": 7, "name": "angio", "keypoints": ["Catheter Tip", "bifurcation_1", "bifurcation-2", "stent"]},
        {"id": 9, "name": "tip"},
        {"id": 11, "name": "Bifurcation", "keypoints": []},
    ]
    images = [{"id": 1, "file_name": "x.png", "width": 20, "height": 10}]
    anns = [
        {"image_id": 1, "category_id": 7, "keypoints": [1, 2, 2, 3, 4, 1, 0, 0, 0, 5, 5, 2]},
        {"image_id": 1, "category_id": 9, "keypoints": [6.5, 7.25, 2]},
        {"image_id": 1, "category_id": 11, "keypoints": [8, 9, 1]},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 3, 3]},  # a box only: not ours to read
    ]
    labels = read_coco(doc(images, anns, cats))
    assert labels.problems == [] and labels.ignored_points == 1
    got = labels.points[("x.png", None)]
    assert sorted(map(tuple, got.points.tolist())) == [(1, 2), (3, 4), (6.5, 7.25), (8, 9)]
    assert sorted(got.classes.tolist()) == [TIP, TIP, BIFURCATION, BIFURCATION]


@pytest.mark.parametrize(
    ("images", "annotations", "reason"),
    [
        ([{"id": 1, "file_name": "a.png", "width": 8, "height": 8}], [(8.0, 3.0)], "outside the 8x8 image"),
        ([{"id": 1, "file_name": "a.png", "width": 8, "height": 6}], [(3.0, -0.6)], "outside the 8x6 image"),
        ([{"id": 1, "file_name": "a.png"}], [], "width and height"),
        ([{"id": 1, "file_name": "a.png", "width": 8, "height": 8, "frame": -1}], [], "frame"),
        ([{"id": 1, "width": 8, "height": 8}], [], "no file_name"),
    ],
)
def test_bad_image_entries_are_quarantined_not_moved(images, annotations, reason):
    good = {"id": 2, "file_name": "b.png", "width": 8, "height": 8}
    anns = [{"image_id": 1, "category_id": 1, "keypoints": [x, y, 2]} for x, y in annotations]
    anns.append({"image_id": 2, "category_id": 2, "keypoints": [7.5, -0.5, 2]})  # on the edge: kept
    labels = read_coco(doc([*images, good], anns))
    assert len(labels.problems) == 1 and reason in labels.problems[0]
    assert "a.png" not in labels.problems[0]  # reasons never quote file names
    assert list(labels.labels) == [("b.png", None)]
    np.testing.assert_array_equal(labels.points[("b.png", None)].points, [[7.5, -0.5]])


def test_broken_references_and_duplicates():
    images = [
        {"id": 1, "file_name": "a.png", "width": 8, "height": 8},
        {"id": 2, "file_name": "b.png", "width": 8, "height": 8},
        {"id": 3, "file_name": "c.png", "width": 8, "height": 8},
        {"id": 4, "file_name": "c.png", "width": 8, "height": 8},  # the same image twice
        {"id": 5, "file_name": "d.png", "width": 8, "height": 8},
    ]
    anns = [
        {"image_id": 99, "category_id": 1, "keypoints": [1, 1, 2]},
        {"image_id": 1, "category_id": 42, "keypoints": [1, 1, 2]},
        {"image_id": 2, "category_id": 1, "keypoints": [1, 1]},
        {"image_id": 5, "category_id": 1, "keypoints": [1, float("nan"), 2]},
    ]
    labels = read_coco(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}).encode())
    text = " | ".join(labels.problems)
    for expected in ("refers to no image", "unknown category", "malformed keypoints", "listed twice"):
        assert expected in text, expected
    assert labels.labels == {}


@pytest.mark.parametrize(
    "data",
    [
        b'{"images": [], "annotations": [',
        b"\xff\xfe\x00garbage",
        b"[1, 2]",
        b'{"images": {}, "annotations": []}',
    ],
)
def test_malformed_files_are_rejected_whole(data):
    labels = read_coco(data)
    assert labels.malformed and labels.labels == {} and len(labels.problems) == 1


def test_looks_like_coco_decides_by_content():
    phantom_meta = json.dumps(render_frame(16, 0, 0).meta(0)).encode()
    assert not looks_like_coco(phantom_meta)
    assert not looks_like_coco(b"{}") and not looks_like_coco(b"not json")
    assert looks_like_coco(doc([], []))
    assert looks_like_coco(b'{"images": [], "annotations": [ broken')  # a broken label file: quarantined


def test_resolve_file_names():
    rels = {"p1/images/f0.png": 0, "p1/images/f1.png": 1, "p2/images/f0.png": 2, "top.png": 3}
    assert resolve("images/f0.png", "p1/labels.json", rels) == (0, None)  # beside the label file
    assert resolve("../images/f1.png", "p1/annotations/x.json", rels) == (1, None)
    assert resolve("f1.png", "p1/annotations/x.json", rels) == (1, None)  # CVAT: names under images/
    assert resolve("top.png", "labels.json", rels) == (3, None)
    index, why = resolve("f0.png", "annotations/x.json", rels)
    assert index is None and "matches 2 files" in why
    for name in ("missing.png", "/etc/passwd", "../../top.png", "C:\\x.png"):
        index, why = resolve(name, "p1/labels.json", rels)
        assert index is None and "unknown image" in why


def test_read_labelled_folder(tmp_path):
    out = write_phantom(tmp_path / "ph", n=3, size=64, seed=2)
    frames = read_labelled_folder(out, 32)
    assert len(frames) == 3 and frames.size == 32 and frames.synthetic is True
    for i in range(3):
        ref = render_frame(64, 2, i)
        want, _ = follow_crop_resize(FramePoints.from_dict(ref.keypoints), 64, 64, 32)
        got = frames.frame_points(i)
        np.testing.assert_allclose(got.points, want.points, atol=1e-3)
        np.testing.assert_array_equal(got.classes, want.classes)
    same = read_labelled_folder(out, 64)
    np.testing.assert_array_equal(same.images[1], render_frame(64, 2, 1).pixels)
    (out / "frame_00001.png").unlink()
    with pytest.raises(DataError, match="cannot be read"):
        read_labelled_folder(out, 32)
    with pytest.raises(DataError, match="0 COCO key-point files"):
        read_labelled_folder(tmp_path, 32)
