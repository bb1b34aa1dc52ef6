"""The phantom data set: deterministic, structured like angiography cine loops, written as PNG or DICOM."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from PIL import Image

from medsynth.cli import main
from medsynth.data.dicom_writer import read_provenance, write_secondary_capture, write_xa
from medsynth.data.phantom import PhantomFrame, phantom_frames, render_frame, write_phantom
from medsynth.errors import ConfigError

_FRAMES_HASH = """
import hashlib, sys
from medsynth.data.phantom import render_frame
h = hashlib.sha256()
for i in map(int, sys.argv[3:]):
    f = render_frame(int(sys.argv[1]), int(sys.argv[2]), i)
    h.update(f.pixels.tobytes()); h.update(repr(f.keypoints).encode())
print(h.hexdigest())
"""


def _hash(frames: list[PhantomFrame]) -> str:
    h = hashlib.sha256()
    for f in frames:
        h.update(f.pixels.tobytes())
        h.update(repr(f.keypoints).encode())
    return h.hexdigest()


def _ring(img: np.ndarray, x: float, y: float, r0: float, r1: float) -> np.ndarray:
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    d = np.hypot(xx - x, yy - y)
    return img[(d >= r0) & (d <= r1)]


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def test_same_seed_same_bytes_in_a_fresh_process_and_in_any_order():
    here = list(phantom_frames(12, 32, seed=5))
    # A fresh process renders frames 11, 3 and 7 first and cold: caches and order must not matter.
    out = subprocess.run(
        [sys.executable, "-c", _FRAMES_HASH, "32", "5", "11", "3", "7"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == _hash([here[11], here[3], here[7]])


def test_frame_i_does_not_depend_on_n():
    short = list(phantom_frames(5, 64, seed=3))
    long = list(phantom_frames(20, 64, seed=3))
    assert len(short) == 5 and len(long) == 20
    for a, b in zip(short, long, strict=False):
        assert np.array_equal(a.pixels, b.pixels)
        assert a.keypoints == b.keypoints and (a.patient, a.loop, a.frame) == (b.patient, b.loop, b.frame)
    assert np.array_equal(render_frame(64, 3, 17).pixels, long[17].pixels)


@pytest.mark.parametrize("size", [8, 64, 256])
def test_shape_dtype_and_keypoints_inside(size):
    for f in phantom_frames(9, size, seed=1):
        assert f.pixels.shape == (size, size) and f.pixels.dtype == np.uint8
        assert f.pixels.std() > 2  # an image, not a constant
        kp = f.keypoints
        assert set(kp) == {"bifurcations", "catheter_tip"}
        for x, y in [*kp["bifurcations"], kp["catheter_tip"]]:
            assert 0 <= x <= size - 1 and 0 <= y <= size - 1
    assert len(render_frame(size, 1, 0).keypoints["bifurcations"]) >= 3


def test_grouping_into_loops_and_patients():
    frames = list(phantom_frames(40, 16, seed=0, frames_per_loop=4, loops_per_patient=3))
    assert [f.frame for f in frames[:9]] == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    assert [f.loop for f in frames[::4]] == list(range(10))
    patients = [f.patient for f in frames]
    assert len(set(patients[:12])) == 1 and patients[12] != patients[11]
    assert len(set(patients)) == 4  # 40 frames / (4 frames x 3 loops) -> 4 patients, the last partial


@pytest.mark.parametrize("size", [64, 128])
def test_catheter_tip_is_on_a_dark_pixel(size):
    for f in phantom_frames(24, size, seed=2):
        x, y = f.keypoints["catheter_tip"]
        img = f.pixels.astype(np.float64)
        tip = img[round(y), round(x)]
        around = np.median(_ring(img, x, y, 0.08 * size, 0.12 * size))
        assert tip < 0.5 * around, (f.loop, f.frame, tip, around)


def test_vessels_are_darker_than_their_surroundings():
    ratios = []
    for f in phantom_frames(32, 128, seed=4):
        img = f.pixels.astype(np.float64)
        for x, y in f.keypoints["bifurcations"]:
            ratios.append(img[round(y), round(x)] / np.median(_ring(img, x, y, 6, 10)))
    ratios = np.array(ratios)
    assert len(ratios) > 50
    assert ratios.mean() < 0.7
    assert (ratios < 0.9).mean() > 0.9


def test_different_seeds_differ():
    a, b = render_frame(64, 0, 0), render_frame(64, 1, 0)
    assert np.abs(a.pixels.astype(int) - b.pixels.astype(int)).mean() > 5
    assert a.keypoints != b.keypoints


def test_frames_of_a_loop_correlate_more_than_frames_of_different_loops():
    frames = list(phantom_frames(48, 64, seed=0))
    within = [_corr(a.pixels, b.pixels) for a, b in zip(frames, frames[1:], strict=False) if a.loop == b.loop]
    firsts = frames[::8]
    across = [_corr(a.pixels, b.pixels) for i, a in enumerate(firsts) for b in firsts[i + 1 :]]
    assert min(within) > max(across)
    assert np.mean(within) > np.mean(across) + 0.25
    # The heart moves within a loop: consecutive frames are not identical, nor are the key points.
    assert not np.array_equal(frames[0].pixels, frames[1].pixels)
    assert frames[0].keypoints["bifurcations"] != frames[1].keypoints["bifurcations"]


def test_dicom_round_trip(tmp_path):
    out = write_phantom(tmp_path / "dcm", n=11, size=32, seed=7, fmt="dicom")
    frames = list(phantom_frames(11, 32, seed=7))
    files = sorted(out.glob("*.dcm"))
    assert [p.name for p in files] == ["loop_00000.dcm", "loop_00001.dcm"]
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "XA" and ds.SOPClassUID == pydicom.uid.XRayAngiographicImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsStored == 8
    assert int(ds.NumberOfFrames) == 8
    assert np.array_equal(ds.pixel_array, np.stack([f.pixels for f in frames[:8]]))
    patient = frames[0].patient
    assert str(ds.PatientName) == f"PHANTOM^{patient}" and ds.PatientID == f"PHANTOM-{patient}"
    assert "SYNTHETIC" in ds.SeriesDescription
    last = pydicom.dcmread(files[1])
    assert int(last.NumberOfFrames) == 3  # the partial last loop
    assert np.array_equal(last.pixel_array, np.stack([f.pixels for f in frames[8:]]))
    assert last.StudyInstanceUID == ds.StudyInstanceUID  # two loops of one patient: one study
    assert last.SeriesInstanceUID != ds.SeriesInstanceUID
    meta = json.loads((out / "loop_00001.json").read_text())
    assert [fr["keypoints"] for fr in meta["frames"]] == [f.keypoints for f in frames[8:]]
    # Same seed, same bytes (UIDs included).
    again = write_phantom(tmp_path / "dcm2", n=11, size=32, seed=7, fmt="dicom")
    assert (again / "loop_00000.dcm").read_bytes() == files[0].read_bytes()


def test_write_xa_uint16_and_input_checks(tmp_path):
    frames = (np.arange(2 * 4 * 6, dtype=np.uint16).reshape(2, 4, 6) * 80).astype(np.uint16)
    path = write_xa(
        tmp_path / "x.dcm",
        frames,
        patient_id="ID",
        patient_name="A^B",
        synthetic=False,
        extra={"StudyDate": "20200102"},
    )
    ds = pydicom.dcmread(path)
    assert np.array_equal(ds.pixel_array, frames) and ds.BitsStored == 12 and ds.StudyDate == "20200102"
    assert read_provenance(ds) is None  # not synthetic: no synthetic block
    with pytest.raises(ConfigError, match="uint8 or uint16"):
        write_xa(
            tmp_path / "y.dcm", frames.astype(np.float32), patient_id="", patient_name="", synthetic=True
        )
    with pytest.raises(ConfigError, match="NotAKeyword"):
        write_xa(
            tmp_path / "z.dcm",
            frames,
            patient_id="",
            patient_name="",
            synthetic=True,
            extra={"NotAKeyword": 1},
        )


def test_secondary_capture_is_marked_synthetic_and_has_no_patient(tmp_path):
    image = render_frame(32, 0, 0).pixels
    prov = {"model": "generator", "version": "3", "seed": "42"}
    path = write_secondary_capture(tmp_path / "sc.dcm", image, description="GAN sample", provenance=prov)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "NO"
    assert ds.ConversionType == "SYN"
    assert "SYNTHETIC" in ds.SeriesDescription and "SYNTHETIC" in ds.ImageComments
    assert "model=generator" in ds.ImageComments and "seed=42" in ds.ImageComments
    assert str(ds.PatientName) in ("", "SYNTHETIC") and ds.PatientID in ("", "SYNTHETIC")
    assert not ds.PatientBirthDate and not ds.get("InstitutionName")
    stored = read_provenance(path)
    assert stored is not None and {k: stored[k] for k in prov} == prov
    assert np.array_equal(ds.pixel_array, image)


def test_cli_writes_png_frames_with_keypoints(tmp_path, capsys):
    out = tmp_path / "png"
    assert main(["phantom", "--out", str(out), "-n", "3", "--size", "32", "--seed", "9"]) == 0
    assert "wrote 3 phantom frames" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
    frames = [f"frame_{i:05d}.{ext}" for i in range(3) for ext in ("json", "png")]
    assert names == ["_COMPLETE", "annotations.json", *frames, "phantom.json"]
    ref = render_frame(32, 9, 2)
    img = Image.open(out / "frame_00002.png")
    assert img.text["medsynth:synthetic"] == "true"
    assert np.array_equal(np.asarray(img), ref.pixels)
    meta = json.loads((out / "frame_00002.json").read_text())
    assert meta["keypoints"] == ref.keypoints and meta["seed"] == 9 and meta["patient"] == ref.patient
    # The same key points as COCO Keypoints, which prepare reads beside the frames.
    from medsynth.data.coco import read_coco

    coco = read_coco((out / "annotations.json").read_bytes())
    assert coco.problems == [] and coco.synthetic is True
    assert coco.points[("frame_00002.png", None)].to_dict() == ref.keypoints
    # Writing again with fewer frames replaces the set as a whole: no stale frames remain.
    assert main(["phantom", "--out", str(out), "-n", "1", "--size", "32"]) == 0
    assert not (out / "frame_00001.png").exists()


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--size", "100"], "--size"),
        (["--size", "2048"], "--size"),
        (["-n", "0"], "-n"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, flag):
    assert main(["phantom", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0]
    assert not (tmp_path / "o").exists()


def test_write_phantom_refuses_a_foreign_directory_and_bad_format(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a phantom data set"):
        write_phantom(tmp_path, n=1, size=16)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="--format"):
        write_phantom(tmp_path / "x", n=1, size=16, fmt="jpeg")
