"""`prepare` on real-data sources: folders, zips, gs://; de-identification, patient splits, hostile input."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from medsynth import storage
from medsynth.data.dicom_writer import save_dataset, write_xa
from medsynth.data.input import load_manifest, make_dataset, resolve_dataset
from medsynth.data.prepare import PrepareConfig, prepare
from medsynth.data.shards import read_records
from medsynth.errors import DataError

SIZE = 16

# Identifiers that must never reach an output: distinctive, so a chance match in binary data is impossible.
PHI_NAME, PHI_ID, PHI_BIRTH = "ZQXDOE^JOHNATHAN", "PID-98765-QX", "19420317"
PHI_ACCESSION, PHI_INSTITUTION, PHI_DATE = "ACC77331199", "ST ZQX INFIRMARY", "20190523"
PHI_REFERRER, PHI_STUDY_UID = "DRQXW^WHOMEVER", "1.2.826.0.1.3680043.8.498.7777311"


def patient_phi(i: int) -> dict:
    return {
        "PatientName": f"{PHI_NAME}{i}",
        "PatientID": f"{PHI_ID}{i}",
        "PatientBirthDate": PHI_BIRTH,
        "AccessionNumber": f"{PHI_ACCESSION}{i}",
        "InstitutionName": PHI_INSTITUTION,
        "InstitutionAddress": "77 ZQX LANE",
        "StudyDate": PHI_DATE,
        "SeriesDate": PHI_DATE,
        "ReferringPhysicianName": PHI_REFERRER,
        "OperatorsName": "OPZQX^ANNA",
    }


def write_patient_loop(path: Path, i: int, loop: int, frames: int = 4, study: int = 0, **attrs) -> Path:
    rng = np.random.default_rng(100 * i + loop)
    pixels = rng.integers(0, 255, (frames, 24, 24)).astype(np.uint8)
    phi = patient_phi(i)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_xa(
        path,
        pixels,
        patient_id=phi.pop("PatientID"),
        patient_name=phi.pop("PatientName"),
        study_uid=f"{PHI_STUDY_UID}.{i}.{study}",
        synthetic=False,
        extra=phi,
    )
    if attrs:
        ds = pydicom.dcmread(path)
        for k, v in attrs.items():
            setattr(ds, k, v)
        save_dataset(path, ds)
    return path


def phi_strings(folder: Path) -> set[str]:
    """Every identifying value in the inputs (UIDs read back from the files) and in their file names."""
    found = {
        PHI_BIRTH,
        PHI_DATE,
        PHI_INSTITUTION,
        PHI_REFERRER,
        PHI_STUDY_UID,
        "ZQXDOE",
        "JOHNATHAN",
        "77 ZQX LANE",
        "OPZQX",
    }
    for p in folder.rglob("*"):
        if p.is_file():
            found.update(part for part in p.relative_to(folder).parts)
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception:
                continue
            for kw in (
                "PatientName",
                "PatientID",
                "AccessionNumber",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
            ):
                if ds.get(kw):
                    found.add(str(ds.get(kw)))
    return {s for s in found if len(s) >= 6}


@pytest.fixture
def phi_folder(tmp_path) -> Path:
    """4 patients, 2 loops each (patient 0 has a second study), file and folder names full of PHI, and
    bad files named with PHI too."""
    src = tmp_path / "src"
    for i in range(4):
        folder = src / f"ZQXDOE_JOHNATHAN{i}_{PHI_ID}{i}"
        write_patient_loop(folder / f"{PHI_NAME.replace('^', '_')}{i}_loop0.dcm", i, 0)
        write_patient_loop(folder / f"{PHI_BIRTH}_loop1.dcm", i, 1, study=1 if i == 0 else 0)
    data = write_patient_loop(src / "tmp.dcm", 9, 0).read_bytes()
    (src / "tmp.dcm").unlink()
    (src / f"ZQXDOE_JOHNATHAN9_{PHI_ID}9_truncated.dcm").write_bytes(data[: len(data) // 2])
    write_patient_loop(src / f"ZQXDOE_JOHNATHAN8_{PHI_ID}8_burned.dcm", 8, 0, BurnedInAnnotation="YES")
    # Invalid values: pydicom's reader warns and logs them verbatim unless prepare silences it.
    mode = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        write_patient_loop(src / "invalid_values.dcm", 3, 2, PatientBirthDate=f"ZQXBAD{PHI_BIRTH}")
    finally:
        pydicom.config.settings.writing_validation_mode = mode
    return src


def output_bytes(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_phi_never_reaches_outputs_logs_or_messages(phi_folder, tmp_path, caplog, capfd):
    secrets = phi_strings(phi_folder)
    assert len(secrets) > 20
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        ds = prepare(PrepareConfig(source=str(phi_folder), out=str(out), image_size=SIZE, val_fraction=0.25))
        with pytest.raises(DataError) as failed:  # the failure message too
            prepare(
                PrepareConfig(
                    source=str(phi_folder),
                    out=str(tmp_path / "o2"),
                    image_size=SIZE,
                    min_frames=10_000,
                    workers=1,
                )
            )
    captured = capfd.readouterr()  # file-descriptor level: worker processes' output too
    texts = [caplog.text, captured.out, captured.err, str(failed.value)]
    files = output_bytes(out)
    assert any(name.endswith(".tfrecord") for name, _ in files) and len(files) >= 5
    for secret in secrets:
        for variant in {secret, secret.lower(), secret.upper(), secret.replace("^", " ")}:
            needle = variant.encode()
            for name, data in files:
                assert needle not in data, f"{variant!r} found in {name}"
                assert variant not in name
            for text in texts:
                assert variant not in text
    m = load_manifest(ds)
    assert m["synthetic"] is False and m["quarantined"] == 2
    q = json.loads((ds / "quarantine.json").read_text())
    assert {e["name"][:6] for e in q["entries"]} == {"input-"}
    reasons = " ".join(e["reason"] for e in q["entries"])
    assert "BurnedInAnnotation" in reasons and "decode" in reasons


def test_patient_level_split(phi_folder, tmp_path):
    ds = prepare(
        PrepareConfig(
            source=str(phi_folder), out=str(tmp_path / "out"), image_size=SIZE, val_fraction=0.25, workers=1
        )
    )
    m = load_manifest(ds)
    by_split = {s["split"]: list(read_records(ds / s["file"])) for s in m["shards"]}
    assert set(by_split) == {"train", "val"}
    train_p = {r.patient for r in by_split["train"]}
    val_p = {r.patient for r in by_split["val"]}
    assert len(train_p) == 3 and len(val_p) == 1 and not train_p & val_p
    # Patient 0's two studies stay together; loops are whole.
    studies = {}
    for split, recs in by_split.items():
        for r in recs:
            studies.setdefault(r.patient, set()).add((split, r.study))
    assert sorted(len(v) for v in studies.values()) == [1, 1, 1, 2]
    assert all(len({s for s, _ in v}) == 1 for v in studies.values())
    loops = {}
    for split, recs in by_split.items():
        for r in recs:
            loops.setdefault(r.loop, []).append((split, r.frame))
    assert len(loops) == 9 and all(sorted(f for _, f in v) == [0, 1, 2, 3] for v in loops.values())
    # Deterministic per seed; another seed may choose another validation patient.
    again = prepare(
        PrepareConfig(
            source=str(phi_folder), out=str(tmp_path / "again"), image_size=SIZE, val_fraction=0.25, workers=1
        )
    )
    assert load_manifest(again)["splits"] == m["splits"]


def test_rerun_reuses_and_content_changes_hash(phi_folder, tmp_path, caplog):
    cfg = PrepareConfig(source=str(phi_folder), out=str(tmp_path / "out"), image_size=SIZE, workers=1)
    first = prepare(cfg)
    with caplog.at_level(logging.INFO, logger="medsynth.data.prepare"):
        assert prepare(cfg) == first
    assert "reusing" in caplog.text
    victim = sorted(phi_folder.rglob("*_loop0.dcm"))[0]
    write_patient_loop(victim, 0, 5)
    assert prepare(cfg) != first


def make_images(folder: Path) -> None:
    """PNG 8 bit, PNG 16 bit, JPEG, TIFF in per-patient sub-folders (one flat file too)."""
    rng = np.random.default_rng(0)
    for p in range(3):
        d = folder / f"p{p}"
        d.mkdir(parents=True)
        for k in range(3):
            img8 = rng.integers(0, 255, (20, 30)).astype(np.uint8)
            Image.fromarray(img8).save(d / f"f{k}.png")
        Image.fromarray(rng.integers(0, 255, (20, 20)).astype(np.uint8)).save(d / "f.jpg", quality=90)
        Image.fromarray(rng.integers(0, 255, (20, 20)).astype(np.uint8)).save(d / "f.tif")
        (d / "f.json").write_text("{}")  # side-car files are skipped, not quarantined
    Image.fromarray(rng.integers(0, 65535, (20, 20)).astype(np.uint16)).save(folder / "deep.png")


def test_image_folder_and_zip_give_the_same_frames(tmp_path):
    src = tmp_path / "imgs"
    make_images(src)
    ds = prepare(PrepareConfig(source=str(src), out=str(tmp_path / "a"), image_size=SIZE, workers=1))
    m = load_manifest(ds)
    assert m["dtype"] == "uint16"  # one 16-bit input: everything is stored at 16 bits
    assert m["frames"] == 16 and m["quarantined"] == 0
    assert m["source"]["skipped_sidecar_files"] == 3
    assert m["source"]["formats"] == {"png": 10, "jpeg": 3, "tiff": 3}
    assert sum(len(v["patients"]) for v in m["splits"].values()) == 4  # 3 folders + 1 loose file
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    dz = prepare(PrepareConfig(source=str(archive), out=str(tmp_path / "b"), image_size=SIZE, workers=1))
    mz = load_manifest(dz)
    assert mz["source"]["scheme"] == "zip" and mz["frames"] == 16
    assert (
        mz["pixel_stats"] == m["pixel_stats"]
        and mz["splits"]["train"]["frames"] == m["splits"]["train"]["frames"]
    )
    batch = next(iter(make_dataset(dz, batch_size=4)))
    assert batch.shape == (4, SIZE, SIZE, 1)


def test_hostile_zip(tmp_path):
    good = io.BytesIO()
    Image.fromarray(np.full((20, 20), 99, np.uint8)).save(good, format="PNG")
    archive = tmp_path / "hostile.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for k in range(10):
            zf.writestr(f"ok/{k}.png", good.getvalue())
        zf.writestr("../escape.png", good.getvalue())
        zf.writestr("/abs/escape.png", good.getvalue())
        zf.writestr("a/../../escape2.png", good.getvalue())
        zf.writestr("bomb.png", b"\0" * (30 << 20))  # ~1000:1
    out = tmp_path / "out"
    ds = prepare(PrepareConfig(source=str(archive), out=str(out), image_size=SIZE, workers=1))
    q = json.loads((ds / "quarantine.json").read_text())
    reasons = [e["reason"] for e in q["entries"]]
    assert sum("path traversal" in r for r in reasons) == 3
    assert sum("compression ratio" in r for r in reasons) == 1
    assert load_manifest(ds)["frames"] == 10
    assert not list(tmp_path.rglob("escape*"))  # nothing was ever extracted
    # An archive whose declared total is over the limit is refused before anything is read.
    with pytest.raises(DataError, match="zip bomb"):
        prepare(PrepareConfig(source=str(archive), out=str(out), image_size=SIZE, zip_max_total_gb=0.01))


def test_hostile_folder_quarantines_each_bad_file(tmp_path):
    src = tmp_path / "src"
    for i in range(2):
        write_patient_loop(src / f"good{i}.dcm", i, 0, frames=4)
    shutil.copy(get_testdata_file("rtplan.dcm"), src / "plan.dcm")
    shutil.copy(get_testdata_file("test-SR.dcm"), src / "report.dcm")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), src / "mr_truncated.dcm")
    write_patient_loop(src / "oversize.dcm", 5, 0, Rows=8192, Columns=8192, NumberOfFrames=100)
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8)).save(
        png, format="PNG"
    )
    (src / "cut.png").write_bytes(png.getvalue()[:800])
    (src / "blob.bin").write_bytes(os.urandom(300))
    (src / "empty.dcm").write_bytes(b"")
    (src / "inner.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an (empty) archive inside the source
    os.symlink("/etc/hostname", src / "link.png")
    out = tmp_path / "out"
    ds = prepare(PrepareConfig(source=str(src), out=str(out), image_size=SIZE, workers=1, max_pixels_mb=64))
    m = load_manifest(ds)
    assert m["frames"] == 8
    q = json.loads((ds / "quarantine.json").read_text())
    assert q["count"] == 9 == m["quarantined"]
    reasons = {e["index"]: e["reason"] for e in q["entries"]}
    text = " | ".join(reasons.values())
    for expected in (
        "not an image: RT Plan",
        "not an image: Comprehensive SR",
        "over the limit",
        "cannot be decoded",
        "truncated or corrupt",
        "not a DICOM, PNG, JPEG or TIFF",
        "archive inside",
        "symbolic link",
        "empty file",
    ):
        assert expected in text, expected
    # Too few good frames: a clear failure, and nothing half-written left behind.
    out2 = tmp_path / "out2"
    with pytest.raises(DataError, match="only 8 good frames.*--min-frames 9.*9 of 11 inputs quarantined"):
        prepare(
            PrepareConfig(
                source=str(src), out=str(out2), image_size=SIZE, workers=1, min_frames=9, max_pixels_mb=64
            )
        )
    assert not [p for p in out2.rglob("*") if p.is_file()]


def test_gcs_source_and_output(gcs_bucket, phi_folder, tmp_path, caplog):
    storage.upload_dir(phi_folder, f"{gcs_bucket}/incoming")
    root = f"{gcs_bucket}/medsynth"
    cfg = PrepareConfig(source=f"{gcs_bucket}/incoming", out=root, image_size=SIZE, workers=1)
    uri = prepare(cfg)
    assert isinstance(uri, str) and uri.startswith(f"{root}/datasets/dataset/")
    assert storage.is_complete(uri)
    manifest = json.loads(storage.read_bytes(f"{uri}/manifest.json"))
    assert manifest["source"]["scheme"] == "gs" and manifest["frames"] == 36 and manifest["quarantined"] == 2
    with caplog.at_level(logging.INFO, logger="medsynth.data.prepare"):
        assert prepare(cfg) == uri
    assert "reusing" in caplog.text
    local = resolve_dataset(uri, SIZE, tmp_path / "cache")
    assert load_manifest(local)["hash"] == manifest["hash"]
    assert next(iter(make_dataset(local, batch_size=4))).shape == (4, SIZE, SIZE, 1)
    # A .zip object is a source too.
    archive = tmp_path / "frames.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(phi_folder.rglob("*_loop0.dcm")):
            zf.write(p, p.name)
    storage.write_bytes(f"{gcs_bucket}/uploads/frames.zip", archive.read_bytes())
    zipped = prepare(
        PrepareConfig(
            source=f"{gcs_bucket}/uploads/frames.zip", out=str(tmp_path / "z"), image_size=SIZE, workers=1
        )
    )
    assert load_manifest(zipped)["frames"] == 16
    with pytest.raises(DataError, match="nothing-here"):
        prepare(PrepareConfig(source=f"{gcs_bucket}/nothing-here", out=str(tmp_path), image_size=SIZE))
