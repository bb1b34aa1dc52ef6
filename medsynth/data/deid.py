"""De-identification: the only place where identifiers from an input are touched.

Rules this module enforces for the rest of the data path:

- Identifiers (PatientName, PatientID, BirthDate, AccessionNumber, institution, dates, UIDs) are read
  only inside a worker, and leave it only as `prehash()` digests (unsalted SHA-256 of the value plus
  a domain tag). They are never logged, never written.
- Everything that is written (patient/study/loop groups in shards and manifest, quarantine names) is a
  salted, keyed hash (`Hasher`). The salt is derived from the digest of the input's *content* (plus an
  optional secret from `MEDSYNTH_DEID_SALT`), so it is deterministic — re-running on the same input
  reuses the same groups and splits — but nobody holding only the outputs can rebuild it: the
  dataset's directory name is a different one-way function of that digest. Patient IDs are short and
  guessable; without the salt a dictionary attack on the hashes is not possible.
- File names are treated as PHI too (PACS exports often name files after the patient): messages refer
  to inputs by their index in the sorted listing and by a salted name hash.
- `BurnedInAnnotation == YES` means identifiers are written into the pixels: such files are quarantined.
"""

from __future__ import annotations

import hashlib
import hmac
import os

SALT_ENV = "MEDSYNTH_DEID_SALT"

# DICOM keywords that identify a person, a visit or an institution. `identifiers()` reads them; tests
# fill them with PHI and check that none of it reaches an output.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "AccessionNumber",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "StudyTime",
    "StudyID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StationName",
    "DeviceSerialNumber",
)


def prehash(domain: str, value: object) -> str | None:
    """Unsalted digest used only to carry a grouping key out of a worker; never written anywhere."""
    text = str(value).strip() if value is not None else ""
    if not text:
        return None
    return hashlib.sha256(f"{domain}\x00{text}".encode()).hexdigest()


class Hasher:
    """Keyed one-way hashes for everything that groups or names inputs in the outputs."""

    def __init__(self, content_digest: str, secret: str | None = None) -> None:
        secret = secret if secret is not None else os.environ.get(SALT_ENV, "")
        self._key = hashlib.sha256(f"medsynth-deid-salt\x00{secret}\x00{content_digest}".encode()).digest()

    def hash(self, domain: str, value: str, length: int = 16) -> str:
        return hmac.new(self._key, f"{domain}\x00{value}".encode(), hashlib.sha256).hexdigest()[:length]

    def name(self, relative_path: str) -> str:
        """An opaque, stable stand-in for a file name in quarantine entries and messages."""
        return "input-" + self.hash("name", relative_path, 12)


def burned_in_annotation(ds: object) -> bool:
    """True when the file says identifiers are burned into the pixels (or says nothing definite for
    secondary captures, which are screenshots and commonly carry them)."""
    value = str(getattr(ds, "BurnedInAnnotation", "") or "").strip().upper()
    return value == "YES"


def group_keys(ds: object) -> tuple[str | None, str | None, str | None]:
    """(patient, study, loop) pre-hashes of a DICOM header: the patient falls back to the study and the
    study to the series when missing, so grouping never splits a loop and never invents a patient."""
    patient = prehash("patient-id", getattr(ds, "PatientID", None))
    if patient is None:
        name = str(getattr(ds, "PatientName", "") or "")
        birth = str(getattr(ds, "PatientBirthDate", "") or "")
        patient = prehash("patient-name", f"{name}\x00{birth}") if name else None
    study = prehash("study", getattr(ds, "StudyInstanceUID", None))
    if study is None:
        accession = getattr(ds, "AccessionNumber", None)
        study = prehash("accession", accession)
    loop = prehash("series", getattr(ds, "SeriesInstanceUID", None))
    return patient, study, loop
