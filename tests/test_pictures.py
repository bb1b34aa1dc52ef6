"""Sample grids: generated ones are marked synthetic, visibly and in the PNG's metadata."""

from __future__ import annotations

import numpy as np
from PIL import Image

from medsynth.pictures import save_grid


def _frames() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, size=(4, 16, 16, 1)).astype(np.float32)


def test_generated_grid_carries_a_visible_and_a_metadata_synthetic_mark(tmp_path):
    path = save_grid(_frames(), tmp_path / "g.png", title="convnet step 200")
    img = Image.open(path)
    assert img.text["medsynth:synthetic"] == "true" and img.text["Title"] == "convnet step 200"
    band = np.asarray(img)[:14]  # the caption band above the grid
    assert band.max() > 200 and (band > 0).mean() > 0.02
    # the words stay apart: some all-dark column run of >= 3 px between text columns
    cols = (band > 0).any(axis=0)
    text = np.flatnonzero(cols)
    gaps = np.diff(text) - 1
    assert (gaps >= 3).sum() >= 3  # between "SYNTHETIC", "-", "convnet", "step", "200"


def test_real_grid_is_not_marked_synthetic(tmp_path):
    img = Image.open(save_grid(_frames(), tmp_path / "r.png", title="real", synthetic=False))
    assert "medsynth:synthetic" not in img.text and img.text["Title"] == "real"
