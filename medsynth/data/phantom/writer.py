"""The phantom on disk: PNG frames or multi-frame DICOM cine loops, with key points as JSON and COCO."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medsynth.data.phantom.render import FRAMES_PER_LOOP, LOOPS_PER_PATIENT, PhantomFrame, phantom_frames
from medsynth.data.phantom.seeds import check_positive, check_seed
from medsynth.errors import ConfigError
from medsynth.sizes import check_size

FORMATS = ("png", "dicom")
FRAME_TIME_MS = 66.7  # 15 frames/s, a common cine rate


def write_phantom(
    out: str | Path,
    n: int,
    size: int,
    seed: int = 0,
    fmt: str = "png",
    frames_per_loop: int = FRAMES_PER_LOOP,
    loops_per_patient: int = LOOPS_PER_PATIENT,
) -> Path:
    """Write `n` frames to the directory `out` (replaced atomically).

    png: `frame_00000.png` + `frame_00000.json` per frame. dicom: one multi-frame XA file per cine loop
    (`loop_00000.dcm`, PatientName PHANTOM^<patient>) + `loop_00000.json` with every frame's key points.
    `phantom.json` describes the whole set; `annotations.json` holds every frame's key points as COCO
    Keypoints (`data/coco.py`; DICOM: one image entry per frame, with its `frame`), which is what
    `prepare` reads beside user data, so the phantom tests that path end to end.
    """
    from medsynth.data.coco import CocoImage, write_coco
    from medsynth.pictures import png_bytes
    from medsynth.progress import Progress
    from medsynth.storage import atomic_directory

    n = check_positive(n, "-n")
    size = check_size(size, "--size")
    seed = check_seed(seed)
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "phantom.json").exists():
        raise ConfigError(
            f"--out {out} is a non-empty directory that is not a phantom data set; "
            "give a new or empty directory (it is replaced as a whole)"
        )

    info = {
        "n": n,
        "size": size,
        "seed": seed,
        "format": fmt,
        "frames_per_loop": frames_per_loop,
        "loops_per_patient": loops_per_patient,
        "synthetic": True,
        "source": "medsynth phantom",
    }
    coco: list[CocoImage] = []
    with atomic_directory(out) as tmp, Progress(n, "phantom", unit="frame") as bar:
        frames = phantom_frames(n, size, seed, frames_per_loop, loops_per_patient)
        if fmt == "png":
            for i, f in enumerate(frames):
                text = {
                    "Software": "medsynth phantom",
                    "medsynth:synthetic": "true",
                    "medsynth:keypoints": json.dumps(f.keypoints),
                }
                (tmp / f"frame_{i:05d}.png").write_bytes(png_bytes(f.pixels, text))
                _write_json(tmp / f"frame_{i:05d}.json", f.meta(seed) | {"index": i})
                coco.append(CocoImage(f"frame_{i:05d}.png", size, size, _points_in_view(f)))
                bar.update()
        else:
            loop_frames: list[PhantomFrame] = []
            for i, f in enumerate(frames):
                if loop_frames and f.loop != loop_frames[0].loop:
                    _write_loop_dicom(tmp, loop_frames, seed, i - len(loop_frames), loops_per_patient)
                    loop_frames = []
                loop_frames.append(f)
                coco.append(
                    CocoImage(f"loop_{f.loop:05d}.dcm", size, size, _points_in_view(f), frame=f.frame)
                )
                bar.update()
            _write_loop_dicom(tmp, loop_frames, seed, n - len(loop_frames), loops_per_patient)
        write_coco(
            tmp / "annotations.json",
            coco,
            synthetic=True,
            description=f"medsynth phantom key points (seed {seed}, {size} px)",
        )
        _write_json(tmp / "phantom.json", info)
    return out


def _points_in_view(f: PhantomFrame):  # noqa: ANN202 - FramePoints, imported lazily
    """The frame's key points that lie on it (bifurcations are already; the tip is kept only if it is)."""
    from medsynth.data.keypoints import FramePoints

    points = FramePoints.from_dict(f.keypoints)
    return points.keep(points.inside(f.pixels.shape[0]))


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _write_loop_dicom(
    folder: Path, frames: list[PhantomFrame], seed: int, first_index: int, loops_per_patient: int
) -> None:
    from medsynth.data.dicom_writer import make_uid, write_xa

    f0 = frames[0]
    size = f0.pixels.shape[0]
    patient = f0.loop // loops_per_patient
    # Recognisable but fake identifying data, so that de-identification has something to remove.
    extra = {
        "PatientBirthDate": f"{1940 + (patient * 7 + seed) % 45}0101",
        "PatientSex": "O",
        "StudyDate": "20000101",
        "StudyTime": "080000",
        "SeriesTime": f"08{f0.loop % loops_per_patient:02d}00",
        "AccessionNumber": f"PH{seed % 10000:04d}{patient:05d}",
        "InstitutionName": "PHANTOM HOSPITAL",
        "ReferringPhysicianName": "PHANTOM^REFERRER",
        "StudyID": f"{patient:05d}",
        "SeriesNumber": f0.loop % loops_per_patient + 1,
    }
    name = f"loop_{f0.loop:05d}"
    write_xa(
        folder / f"{name}.dcm",
        np.stack([f.pixels for f in frames]),
        patient_id=f"PHANTOM-{f0.patient}",
        patient_name=f"PHANTOM^{f0.patient}",
        study_uid=make_uid("phantom", seed, loops_per_patient, f0.patient),
        series_uid=make_uid("phantom", seed, loops_per_patient, "loop", f0.loop, size),
        synthetic=True,
        extra=extra,
        frame_time_ms=FRAME_TIME_MS,
        uid_entropy=["phantom", seed, loops_per_patient, "loop", f0.loop, size, len(frames)],
    )
    _write_json(
        folder / f"{name}.json",
        {
            "patient": f0.patient,
            "loop": f0.loop,
            "seed": seed,
            "size": size,
            "synthetic": True,
            "first_index": first_index,
            "frames": [
                {"frame": f.frame, "index": first_index + k, "keypoints": f.keypoints}
                for k, f in enumerate(frames)
            ],
        },
    )
