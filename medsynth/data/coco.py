"""COCO Keypoints JSON, both ways: what CVAT and Label Studio export, and what we write beside frames.

Written files hold two categories, `catheter` (key point `catheter_tip`) and `vessel` (key point
`bifurcation`), and one annotation per key point (`keypoints: [x, y, 2]`, a small box around it).
Coordinates are in `data/keypoints.py`'s convention (pixel centres at integers), rounded to 3
decimals; `info` says so and says whether the frames are synthetic. Our one extension: an image
entry may carry `"frame"`, the 0-based frame of a multi-frame file (a DICOM loop, a multi-page
TIFF) that the entry's annotations belong to; entries without it are single images.

Reading takes what annotation tools export: any categories, one or several key points per annotation
(a category's `keypoints` names, or its `name` when it has none); `catheter_tip` / `tip` is the
catheter tip, names starting with `bifurcation` are bifurcations, other names are ignored and counted;
visibility 0 is "not labelled", 1 and 2 are labelled. An image entry with no annotations is a frame
labelled with no point in view. Coordinates are taken in our convention as they are. A label that is
wrong is quarantined with a reason that quotes no string from the file, never moved or clamped.
File names resolve relative to the JSON's folder, else to the one source file whose path ends with
the name (CVAT's `annotations/` beside `images/`).
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.keypoints import BIFURCATION, TIP, FramePoints, LabelledFrames
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


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class CocoLabel:
    """One image entry's key points as read, with the size the labelling tool saw the image at."""

    entry: str  # "image entry #3 (id 7)": how quarantine reasons name it (never the file name)
    width: int
    height: int
    points: FramePoints


@dataclass
class CocoLabels:
    """A label file as read: good labels by (file_name, frame), and why the others were quarantined.

    Each problem is one quarantined label (an image entry's key points) or, for a malformed file, the
    whole file; reasons never quote a file name or any other string from the file (they may hold PHI).
    """

    labels: dict[tuple[str, int | None], CocoLabel]
    problems: list[str]
    ignored_points: int = 0  # labelled key points whose names are none of ours (counted, not used)
    synthetic: bool = False  # info.synthetic: set by medsynth's own writers
    malformed: bool = False  # the whole file was rejected

    @property
    def points(self) -> dict[tuple[str, int | None], FramePoints]:
        return {k: v.points for k, v in self.labels.items()}


def keypoint_class(name: object) -> int | None:
    """Our class of a key point name as CVAT / Label Studio projects spell it, or None (ignored)."""
    if not isinstance(name, str):
        return None
    n = name.strip().lower().replace(" ", "_").replace("-", "_")
    if n in ("catheter_tip", "tip", "cathetertip"):
        return TIP
    if n.startswith("bifurcation"):
        return BIFURCATION
    return None


def looks_like_coco(data: bytes) -> bool:
    """Whether a JSON file beside the frames is a COCO label file (decided by content, not by name):
    an object with `images` and `annotations` lists. A file that does not parse but names both keys is
    a broken label file (read_coco quarantines it); anything else is a side-car file to skip."""
    try:
        doc = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return b'"annotations"' in data and b'"images"' in data
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("images"), list)
        and isinstance(doc.get("annotations"), list)
    )


def read_coco(data: bytes) -> CocoLabels:
    """Key points of a COCO Keypoints file: v=0 not labelled, v=1/2 labelled; an image entry without
    annotations is labelled with no points. Bad labels are quarantined, never moved or clamped."""
    try:
        doc = json.loads(data)
    except ValueError as e:
        return _malformed(f"malformed JSON ({type(e).__name__})")
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        return _malformed("not a COCO file: no list of images")
    if not isinstance(doc.get("annotations"), list):
        return _malformed("not a COCO file: no list of annotations")
    categories = doc.get("categories", [])
    if not isinstance(categories, list):
        return _malformed("not a COCO file: categories is not a list")
    info = doc.get("info") if isinstance(doc.get("info"), dict) else {}
    names: dict[object, list] = {}
    for c in categories:
        if isinstance(c, dict) and _hashable(c.get("id")):
            kp = c.get("keypoints")
            # A category without key point names (Label Studio's one-label categories) is its own point.
            names[c["id"]] = list(kp) if isinstance(kp, list) and kp else [c.get("name")]

    problems: list[str] = []
    images: dict[object, tuple[tuple[str, int | None], CocoLabel]] = {}
    bad: set[object] = set()  # image ids whose labels are quarantined
    seen: dict[tuple[str, int | None], object] = {}
    for pos, im in enumerate(doc["images"]):
        key, label, problem = _image_entry(pos, im)
        if problem is not None:
            problems.append(problem)
            if isinstance(im, dict) and _hashable(im.get("id")):
                bad.add(im["id"])
            continue
        if im["id"] in images:
            problems.append(f"{label.entry}: image id used twice")
            bad.add(im["id"])
            continue
        if key in seen:
            problems.append(f"{label.entry}: the same image (and frame) is listed twice")
            bad.update({im["id"], seen[key]})
            continue
        seen[key] = im["id"]
        images[im["id"]] = (key, label)

    points: dict[object, list[tuple[float, float, int]]] = {i: [] for i in images}
    ignored = 0
    for pos, ann in enumerate(doc["annotations"]):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not _hashable(image_id) or (image_id not in images and image_id not in bad):
            problems.append(f"annotation #{pos}: refers to no image entry")
            continue
        if image_id in bad or "keypoints" not in ann:  # boxes or masks only: not ours to read
            continue
        entry = images[image_id][1].entry
        kp, cat = ann.get("keypoints"), ann.get("category_id")
        if not _hashable(cat) or cat not in names:
            problems.append(f"{entry}: annotation #{pos} has an unknown category")
            bad.add(image_id)
            continue
        labels = names[cat]
        if (
            not isinstance(kp, list)
            or len(kp) != 3 * len(labels)
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in kp
            )
        ):
            problems.append(f"{entry}: annotation #{pos} has malformed keypoints")
            bad.add(image_id)
            continue
        for name, (x, y, v) in zip(labels, zip(kp[0::3], kp[1::3], kp[2::3], strict=True), strict=True):
            if v == 0:
                continue
            cls = keypoint_class(name)
            if cls is None:
                ignored += 1
            else:
                points[image_id].append((float(x), float(y), cls))

    out: dict[tuple[str, int | None], CocoLabel] = {}
    for image_id, (key, label) in images.items():
        if image_id in bad:
            continue
        pts = points[image_id]
        fp = FramePoints(
            np.asarray([p[:2] for p in pts], np.float32).reshape(-1, 2),
            np.asarray([p[2] for p in pts], np.int32),
        )
        w, h = label.width, label.height
        if len(fp) and not np.all(
            (fp.points[:, 0] >= -0.5)
            & (fp.points[:, 0] <= w - 0.5)
            & (fp.points[:, 1] >= -0.5)
            & (fp.points[:, 1] <= h - 0.5)
        ):
            problems.append(f"{label.entry}: key point outside the {w}x{h} image")
            continue
        label.points = fp
        out[key] = label
    return CocoLabels(out, problems, ignored, info.get("synthetic") is True)


def _malformed(reason: str) -> CocoLabels:
    return CocoLabels({}, [reason], malformed=True)


def _hashable(v: object) -> bool:
    return isinstance(v, int | str) and not isinstance(v, bool)


def _image_entry(pos: int, im: object) -> tuple[tuple[str, int | None], CocoLabel | None, str | None]:
    """(file_name, frame), the label (no points yet), or why the entry cannot be used."""
    if not isinstance(im, dict):
        return ("", None), None, f"image entry #{pos}: not an object"
    image_id = im.get("id")
    entry = f"image entry #{pos}" + (f" (id {image_id})" if isinstance(image_id, int) else "")
    if not _hashable(image_id):
        return ("", None), None, f"{entry}: no id"
    name = im.get("file_name")
    if not isinstance(name, str) or not name:
        return ("", None), None, f"{entry}: no file_name"
    w, h = im.get("width"), im.get("height")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        return ("", None), None, f"{entry}: no positive integer width and height"
    frame = im.get("frame")
    if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool) or frame < 0):
        return ("", None), None, f"{entry}: frame is not a non-negative integer"
    return (name, frame), CocoLabel(entry, w, h, FramePoints.empty()), None


def resolve(file_name: str, label_rel: str, rels: dict[str, int]) -> tuple[int | None, str | None]:
    """The source entry an image entry names: its path relative to the label file's folder, else the one
    entry whose path ends with it (CVAT's `annotations/` beside `images/`). (index, None) or (None, why)."""
    name = file_name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None, "unknown image (absolute path)"
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(label_rel), name))
    if joined in rels:
        return rels[joined], None
    tail = posixpath.normpath(name)
    if tail.startswith("../"):
        return None, "unknown image (not in the source)"
    found = [i for rel, i in rels.items() if rel == tail or rel.endswith("/" + tail)]
    if len(found) == 1:
        return found[0], None
    if found:
        return None, f"image name matches {len(found)} files of the source"
    return None, "unknown image (not in the source)"


def read_labelled_folder(folder: str | Path, size: int) -> LabelledFrames:
    """Frames and key points of a folder holding images and one COCO file (what `medsynth generate
    --keypoints` writes): every image entry of the file, in its order, cropped and resized to `size`
    like `prepare` does, key points following. `synthetic` comes from the file's info.

    This is our own output read back, not user data to quarantine: any bad label is a `DataError`.
    """
    from medsynth.data.dicom import read_dicom
    from medsynth.data.images import ImageRejected, quantise, read_image, sniff
    from medsynth.data.keypoints import follow_crop_resize
    from medsynth.errors import DataError

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of frames with a COCO key-point file")
    found = [p for p in sorted(folder.glob("*.json")) if looks_like_coco(p.read_bytes())]
    if len(found) != 1:
        raise DataError(
            f"{folder} holds {len(found)} COCO key-point files; give a folder with exactly one "
            "(as `medsynth generate --keypoints` writes)"
        )
    coco = read_coco(found[0].read_bytes())
    if coco.problems:
        raise DataError(
            f"{found[0]} has {len(coco.problems)} bad labels (first: {coco.problems[0]}); write it again"
        )
    images, points = [], []
    for (file_name, frame), label in coco.labels.items():
        path = folder / file_name
        try:
            data = path.read_bytes()
            decode = read_dicom if sniff(data[:132]) == "dicom" else read_image
            decoded = decode(data, size, 1 << 32)
        except (OSError, ImageRejected) as e:
            raise DataError(f"{path} named by {found[0].name} cannot be read ({e})") from None
        k = frame or 0
        if k >= len(decoded.frames):
            raise DataError(f"{path} has {len(decoded.frames)} frames; {found[0].name} labels frame {k}")
        h, w = (int(v) for v in decoded.original[k])
        if (label.width, label.height) != (w, h):
            raise DataError(f"{path} is {w}x{h}, {found[0].name} says {label.width}x{label.height}")
        images.append(quantise(decoded.frames[k], np.dtype(np.uint8)))
        points.append(follow_crop_resize(label.points, h, w, size)[0])
    if not images:
        raise DataError(f"{found[0]} labels no frames")
    return LabelledFrames.from_points(np.stack(images), points, synthetic=coco.synthetic)
