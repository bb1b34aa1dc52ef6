"""The one place that writes DICOM files (pydicom 3).

Two kinds of file leave medsynth: multi-frame X-Ray Angiographic (XA) cine loops — the phantom data set,
written like a real acquisition so that the data pipeline's reader and de-identification are exercised —
and Secondary Capture images for generated frames, which say "synthetic" everywhere a viewer or PACS
looks (SeriesDescription, ImageComments, ConversionType SYN, a private provenance block) and carry no
patient data. Files are valid Part 10 files (explicit VR little endian) written atomically.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
    generate_uid,
)

from medsynth import __version__
from medsynth.errors import ConfigError
from medsynth.storage import atomic_write_bytes

SYNTHETIC = "SYNTHETIC"
PRIVATE_GROUP = 0x0071
PRIVATE_CREATOR = "MEDSYNTH 1.0"
DEFAULT_FRAME_TIME_MS = 66.7  # 15 frames/s


def make_uid(*parts: object) -> str:
    """A UID that is the same every time for the same parts (phantom data, reproducible files)."""
    return generate_uid(entropy_srcs=["medsynth", *(str(p) for p in parts)])


def _uid_maker(entropy: Sequence[object] | None) -> Callable[[str], str]:
    if entropy is None:
        return lambda role: generate_uid()
    return lambda role: make_uid(*entropy, role)


def _pixels(arr: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, int]:
    arr = np.asarray(arr)
    if arr.ndim == ndim + 1 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != ndim:
        raise ConfigError(f"{what}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        bits = 8
    elif arr.dtype == np.uint16:
        peak = int(arr.max()) if arr.size else 0
        bits = next(b for b in (10, 12, 16) if peak < (1 << b))
    else:
        raise ConfigError(f"{what}: pixels must be uint8 or uint16, got {arr.dtype}")
    if min(arr.shape[-2:]) < 1:
        raise ConfigError(f"{what}: empty image, shape {arr.shape}")
    return np.ascontiguousarray(arr), bits


def _new_dataset(sop_class: str, sop_instance: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"MEDSYNTH_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    return ds


def _apply_extra(ds: Dataset, extra: Mapping[str, Any] | None) -> None:
    for keyword, value in (extra or {}).items():
        if tag_for_keyword(keyword) is None:
            raise ConfigError(f"extra DICOM attribute {keyword!r} is not a DICOM keyword")
        setattr(ds, keyword, value)


def _mark_synthetic(ds: Dataset, provenance: Mapping[str, str]) -> None:
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x00, "LO", SYNTHETIC)
    block.add_new(0x01, "UT", json.dumps(dict(provenance), sort_keys=True))


def save_dataset(path: str | os.PathLike, ds: Dataset) -> Path:
    """Write `ds` as a Part 10 file, atomically; other modules that must write DICOM call this."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        raise ConfigError(f"{path}: the dataset has no file meta / transfer syntax; build it here")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(path, buf.getvalue())


# The patient and study modules' type 2 attributes: always present, empty unless `extra` fills them.
_EMPTY_TYPE2 = ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                "StudyID", "AccessionNumber")


def _patient(ds: Dataset, name: str, patient_id: str) -> None:
    ds.PatientName = name
    ds.PatientID = patient_id
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, "")


def write_xa(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    patient_id: str,
    patient_name: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    synthetic: bool,
    extra: dict | None = None,
    frame_time_ms: float = DEFAULT_FRAME_TIME_MS,
    uid_entropy: Sequence[object] | None = None,
) -> Path:
    """One multi-frame XA cine loop [frames, H, W] (uint8 or uint16, MONOCHROME2: dark = dense).

    `uid_entropy` makes every UID not given explicitly reproducible (phantom data); without it they are new.
    `extra` sets further attributes by DICOM keyword (e.g. StudyDate, PatientBirthDate).
    """
    arr, bits = _pixels(frames, 3, f"{path}")
    uid = _uid_maker(uid_entropy)
    ds = _new_dataset(XRayAngiographicImageStorage, uid("sop"))
    ds.StudyInstanceUID = study_uid or uid("study")
    ds.SeriesInstanceUID = series_uid or uid("series")
    # Patient / study / series (type 2 attributes are present, possibly empty).
    _patient(ds, patient_name, patient_id)
    ds.Modality = "XA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "medsynth" if synthetic else ""
    ds.PatientOrientation = ""
    # X-Ray image and acquisition.
    ds.ImageType = ["DERIVED" if synthetic else "ORIGINAL", "PRIMARY", "SINGLE A"]
    ds.PixelIntensityRelationship = "LIN"
    ds.KVP = 80
    ds.RadiationSetting = "GR"
    ds.PositionerMotion = "STATIC"
    ds.PositionerPrimaryAngle = 0
    ds.PositionerSecondaryAngle = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Cine.
    ds.FrameTime = round(float(frame_time_ms), 3)
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.CineRate = max(1, round(1000.0 / float(frame_time_ms)))
    if synthetic:
        ds.SeriesDescription = f"{SYNTHETIC} PHANTOM"
        ds.ImageComments = f"{SYNTHETIC} image (procedural phantom, medsynth {__version__}); not a patient"
        _mark_synthetic(ds, {"generator": "medsynth", "version": __version__})
    _apply_extra(ds, extra)
    ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME2", bits_stored=bits,
                      generate_instance_uid=False)
    ds.NumberOfFrames = arr.shape[0]  # kept for one frame too: the multi-frame module requires it
    return save_dataset(path, ds)


def write_secondary_capture(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    description: str,
    provenance: dict[str, str],
    uid_entropy: Sequence[object] | None = None,
) -> Path:
    """One generated image [H, W] as a Secondary Capture that cannot be mistaken for a patient's image.

    `provenance` (model name, version, seed, ...) goes into ImageComments and a private block.
    """
    arr, bits = _pixels(image, 2, f"{path}")
    if not description or not str(description).strip():
        raise ConfigError("write_secondary_capture: give a non-empty description")
    bad = {k: v for k, v in provenance.items() if not isinstance(k, str) or not isinstance(v, str)}
    if bad:
        raise ConfigError(f"provenance keys and values must be strings, got {bad!r}")
    uid = _uid_maker(uid_entropy)
    ds = _new_dataset(SecondaryCaptureImageStorage, uid("sop"))
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    _patient(ds, SYNTHETIC, SYNTHETIC)
    ds.Modality = "OT"
    ds.ConversionType = "SYN"  # DICOM's own code for "synthetic image"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.Manufacturer = "medsynth"
    ds.SecondaryCaptureDeviceManufacturer = "medsynth"
    ds.SecondaryCaptureDeviceSoftwareVersions = __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SeriesDescription = f"{SYNTHETIC} {description}"[:64]
    prov = "; ".join(f"{k}={v}" for k, v in sorted(provenance.items()))
    ds.ImageComments = f"{SYNTHETIC} image generated by medsynth; {description}; {prov}"[:10240]
    _mark_synthetic(ds, {"generator": "medsynth", "medsynth_version": __version__, **provenance})
    ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME2", bits_stored=bits,
                      generate_instance_uid=False)
    return save_dataset(path, ds)


def read_provenance(ds: Dataset | str | os.PathLike) -> dict[str, str] | None:
    """The provenance a medsynth-written file carries, or None for a file without the private block."""
    if not isinstance(ds, Dataset):
        ds = pydicom.dcmread(ds, stop_before_pixels=True)
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return json.loads(block[0x01].value)
    except (KeyError, ValueError):
        return None
