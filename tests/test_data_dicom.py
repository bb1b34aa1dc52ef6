"""Reading DICOM: pydicom's test files and generated ones (multi-frame, MONOCHROME1, 16 bit, compressed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless, RLELossless

from medsynth.data import dicom as dicom_mod
from medsynth.data.dicom import DicomRejected, display_values, probe, read_dicom
from medsynth.data.dicom_writer import save_dataset, write_xa

LIMIT = 1 << 30


def _read(name: str, size: int):
    return read_dicom(Path(get_testdata_file(name)).read_bytes(), size, LIMIT)


def make_xa(path: Path, frames: np.ndarray, *, patient: str = "PAT-1", **attrs) -> Path:
    """An XA file through the project's writer, then attributes changed (photometric, window, ...)."""
    write_xa(path, frames, patient_id=patient, patient_name=f"{patient}^NAME", synthetic=False)
    ds = pydicom.dcmread(path)
    for k, v in attrs.items():
        setattr(ds, k, v)
    save_dataset(path, ds)
    return path


def _linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR), mapped to [0, 1]: written out here, not taken from pydicom."""
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_display_values_are_pydicoms(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    expected = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    np.testing.assert_array_equal(display_values(ds.pixel_array, ds), expected)


def test_ct_rescale_without_window_is_min_max_of_pydicom_values():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert "RescaleSlope" in ds and "WindowCenter" not in ds
    v = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    out = _read("CT_small.dcm", ds.Rows).frames[0]  # native size: no resize
    np.testing.assert_allclose(out, (v - v.min()) / (v.max() - v.min()), atol=1e-6)


@pytest.mark.parametrize(
    "name", ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_mr_window_across_transfer_syntaxes(name):
    ref = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    c, w = float(ref.WindowCenter), float(ref.WindowWidth)
    x = apply_modality_lut(ref.pixel_array, ref).astype(np.float64)
    out = _read(name, ref.Rows).frames[0]
    np.testing.assert_allclose(out, _linear_window(x, c, w), atol=1e-6)
    pyd = apply_voi_lut(apply_modality_lut(ref.pixel_array, ref), ref)
    assert np.corrcoef(out.ravel(), pyd.ravel())[0, 1] > 0.999999  # an affine map of pydicom's values


@pytest.mark.parametrize(
    "name,frames",
    [
        ("JPGExtended.dcm", 1),  # JPEG extended 12 bit
        ("JPEG2000.dcm", 1),
        ("JPEGLSNearLossless_16.dcm", 1),
        ("rtdose.dcm", 15),  # multi-frame, 32 bit
        ("rtdose_rle.dcm", 15),
        ("examples_ybr_color.dcm", 30),  # multi-frame JPEG baseline, YBR
        ("examples_palette.dcm", 1),
        ("SC_rgb_rle_16bit_2frame.dcm", 2),
        ("liver_1frame.dcm", 1),  # 1 bit
    ],
)
def test_pydicom_files_decode(name, frames):
    d = _read(name, 32)
    assert d.frames.shape == (frames, 32, 32) and d.frames.dtype == np.float32
    assert d.frames.min() >= 0.0 and d.frames.max() <= 1.0 and d.frames.std() > 0


def test_rgb_secondary_captures_become_luma():
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    rgb = ds.pixel_array.astype(np.float64)
    luma = (rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    np.testing.assert_allclose(_read("SC_rgb_rle.dcm", ds.Rows).frames[0], luma, atol=1e-5)
    # The same picture as YBR JPEG (lossy) and uncompressed YBR 4:2:2 is nearly the same grey image.
    for other in ("SC_rgb_jpeg_dcmtk.dcm", "SC_ybr_full_422_uncompressed.dcm"):
        assert np.abs(_read(other, ds.Rows).frames[0] - luma).mean() < 0.02


def test_generated_16bit_monochrome1_multiframe_with_rescale_and_window(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 4000, (3, 48, 48)).astype(np.uint16)
    path = make_xa(
        tmp_path / "m1.dcm",
        stored,
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=4000,
    )
    d = read_dicom(path.read_bytes(), 48, LIMIT)
    assert d.bits == 16 and d.frames.shape == (3, 48, 48)
    x = stored * 2.0 - 1000.0
    np.testing.assert_allclose(d.frames, 1.0 - _linear_window(x, 3000, 4000), atol=1e-5)
    # Without a window: min-max over the whole loop, one mapping for every frame.
    path2 = make_xa(tmp_path / "m2.dcm", stored)
    d2 = read_dicom(path2.read_bytes(), 48, LIMIT)
    np.testing.assert_allclose(d2.frames, (stored - stored.min()) / (stored.max() - stored.min()), atol=1e-6)


def test_compressed_equals_uncompressed(tmp_path):
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 1000, (2, 40, 40)).astype(np.uint16)
    plain = make_xa(tmp_path / "plain.dcm", stored, WindowCenter=500, WindowWidth=800)
    expected = read_dicom(plain.read_bytes(), 32, LIMIT).frames
    for uid in (RLELossless, JPEG2000Lossless):
        ds = pydicom.dcmread(plain)
        ds.compress(uid)
        path = save_dataset(tmp_path / f"{uid.name[:8]}.dcm", ds)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == uid
        np.testing.assert_array_equal(read_dicom(path.read_bytes(), 32, LIMIT).frames, expected)


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_non_images_rejected(name):
    with pytest.raises(DicomRejected, match="not an image"):
        _read(name, 32)


def test_truncated_rejected(tmp_path):
    with pytest.raises(DicomRejected, match="cannot be decoded"):
        _read("MR_truncated.dcm", 32)
    data = make_xa(tmp_path / "t.dcm", np.zeros((4, 64, 64), np.uint8) + 7).read_bytes()
    with pytest.raises(DicomRejected):
        read_dicom(data[: len(data) // 2], 32, LIMIT)
    with pytest.raises(DicomRejected):
        read_dicom(data[:100], 32, LIMIT)


def test_oversize_rejected_before_decoding(tmp_path, monkeypatch):
    path = make_xa(
        tmp_path / "big.dcm",
        np.zeros((1, 8, 8), np.uint16) + 300,
        Rows=4096,
        Columns=4096,
        NumberOfFrames=200,
    )
    monkeypatch.setattr(dicom_mod, "iter_pixels", lambda *a, **k: pytest.fail("decoded an oversize file"))
    with pytest.raises(DicomRejected, match="over the limit"):
        read_dicom(path.read_bytes(), 32, 64 << 20)
    with pytest.raises(DicomRejected, match="over the limit"):
        probe(path.read_bytes(), 64 << 20)


def test_burned_in_annotation_rejected(tmp_path):
    path = make_xa(tmp_path / "b.dcm", np.zeros((1, 16, 16), np.uint8), BurnedInAnnotation="YES")
    with pytest.raises(DicomRejected, match="BurnedInAnnotation"):
        probe(path.read_bytes(), LIMIT)


def test_undecodable_codec_is_rejected_not_crashing():
    # pydicom's JPEG-lossy.dcm has a malformed 12-bit JPEG stream no installed plugin decodes.
    with pytest.raises(DicomRejected, match="cannot be decoded"):
        _read("JPEG-lossy.dcm", 32)


def test_reasons_carry_no_header_values(tmp_path):
    path = make_xa(
        tmp_path / "x.dcm",
        np.zeros((1, 16, 16), np.uint8),
        patient="SECRET-ID-4711",
        BurnedInAnnotation="YES",
        InstitutionName="SECRET HOSPITAL",
    )
    with pytest.raises(DicomRejected) as e:
        read_dicom(path.read_bytes(), 32, LIMIT)
    assert "SECRET" not in str(e.value)
