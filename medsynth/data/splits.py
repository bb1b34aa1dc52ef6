"""Train/val by patient: a patient's frames, all of their loops, land in one split.

Frames of one cine loop are near-identical; splitting by frame would put the same images on both
sides and make validation meaningless. Inputs without a patient fall back to study, series or file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from medsynth.data import deid
from medsynth.data.sources import Entry
from medsynth.data.workers import Scan


def input_group(scan: Scan, entry: Entry, hasher: deid.Hasher) -> tuple[str, str, str]:
    """(patient, study, loop) of an input, patient → else study → else series → else the file itself."""
    file_key = deid.prehash("file", entry.rel)
    patient = scan.patient or scan.study or scan.series or file_key
    study = scan.study or scan.series or file_key
    loop = file_key if (scan.frames > 1 or not scan.series) else scan.series
    return hasher.hash("patient", patient), hasher.hash("study", study), loop


def assign_splits(groups: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """train/val per group (patient hash), deterministic per seed; both splits get one when possible."""
    groups = sorted(set(groups))
    order = sorted(groups, key=lambda g: hashlib.sha256(f"split\x00{seed}\x00{g}".encode()).hexdigest())
    n_val = round(val_fraction * len(order))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    return {g: ("val" if i < n_val else "train") for i, g in enumerate(order)}
