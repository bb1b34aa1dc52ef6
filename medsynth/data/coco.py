"""COCO Keypoints JSON, both ways: what CVAT and Label Studio export, and what we write beside frames.

Written files hold two categories, `catheter` (key point `catheter_tip`) and `vessel` (key point
`bifurcation`), and one annotation per key point (`keypoints: [x, y, 2]`, a small box around it).
Coordinates are in `data/keypoints.py`'s convention (pixel centres at integers), rounded to 3
decimals; `info` says so and says whether the frames are synthetic. Our one extension: an image
entry may carry `"frame"`, the 0-based frame of a multi-frame file (a DICOM loop, a multi-page
TIFF) that the entry's annotations belong to; entries without it are single images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints
from medsynth.storage import atomic_write_json

CONVENTION = (
    "pixel centres at integers: pixel (row i, column j) is the point (x=j, y=i); "
    "a W x H image spans [-0.5, W-0.5] x [-0.5, H-0.5]"
)
CATEGORIES = [
    {"id": 1, "name": "catheter", "keypoints": ["catheter_tip"], "skeleton": []},
    {"id": 2, "name": "vessel", "keypoints": ["bifurcation"], "skeleton": []},
]
_CATEGORY_OF = {TIP: 1, BIFURCATION: 2}
_BOX_HALF = 2.0  # the box around a written key point: 4 x 4 px, for tools that want one


@dataclass
class CocoImage:
    """One image entry with its key points."""

    file_name: str  # path relative to the JSON's folder
    width: int
    height: int
    points: FramePoints  # medsynth.data.keypoints convention
    frame: int | None = None  # 0-based frame of a multi-frame file (DICOM loop); None for single images


def to_coco(images: list[CocoImage], *, synthetic: bool, description: str) -> dict:
    """The COCO Keypoints document for `images` (image and annotation ids count from 1)."""
    entries, annotations = [], []
    for image_id, im in enumerate(images, start=1):
        entry = {"id": image_id, "file_name": im.file_name, "width": int(im.width), "height": int(im.height)}
        if im.frame is not None:
            entry["frame"] = int(im.frame)
        entries.append(entry)
        for (x, y), cls in zip(im.points.points.tolist(), im.points.classes.tolist(), strict=True):
            x, y = round(float(x), 3), round(float(y), 3)
            box = [round(x - _BOX_HALF, 3), round(y - _BOX_HALF, 3), 2 * _BOX_HALF, 2 * _BOX_HALF]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": _CATEGORY_OF[int(cls)],
                    "keypoints": [x, y, 2],
                    "num_keypoints": 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": description, "synthetic": bool(synthetic), "keypoint_convention": CONVENTION},
        "images": entries,
        "annotations": annotations,
        "categories": CATEGORIES,
    }


def write_coco(path: str | Path, images: list[CocoImage], *, synthetic: bool, description: str) -> Path:
    """Write `to_coco(...)` to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, to_coco(images, synthetic=synthetic, description=description))
