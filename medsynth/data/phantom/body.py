"""The body the beam crosses before the vessels: heart shadow, spine, ribs, diaphragm, soft tissue,
and the image intensifier's vignetting; as the transmitted fraction of the beam."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image

from medsynth.data.phantom.loop import projected_loop


@lru_cache(maxsize=4)
def _vignette(size: int) -> np.ndarray:
    """Image-intensifier falloff: darker towards the edges, dark corners outside the round input field."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    v = 1.0 - 0.28 * r**2
    field = 1.0 / (1.0 + np.exp((r - 1.22) / 0.04))
    return (v * (0.15 + 0.85 * field)).astype(np.float32)


@lru_cache(maxsize=16)
def background(seed: int, loop: int, loops_per_patient: int, size: int) -> np.ndarray:
    """Transmitted fraction of the beam through the body (no vessels), float32 [size, size]."""
    lp = projected_loop(seed, loop, loops_per_patient)
    spine_x, spine_w, dia_y, thick, blob_seed, rib_slant, rib_phase, hx, hy, hr = lp.anatomy
    g = 64  # anatomy is smooth: compute it coarse, upsample
    c = (np.arange(g, dtype=np.float64) + 0.5) / g
    x, y = np.meshgrid(c, c)
    att = np.full((g, g), 0.5 * thick)
    # Heart shadow: a large, soft, slightly denser region around the coronary tree.
    att += 0.16 * _soft(hr - np.hypot((x - hx) * 1.1, (y - hy) * 0.95), 0.25)
    # Spine: a vertical band of vertebral bodies (denser) and discs.
    band = _soft(spine_w - np.abs(x - spine_x), 0.06)
    vert = 0.5 + 0.5 * np.cos(2 * math.pi * (y * 6.0 + rib_phase))
    att += band * (0.22 + 0.08 * vert)
    # Posterior ribs: arcs leaving the spine downwards and outwards.
    dx = np.abs(x - spine_x)
    rib_y = y - 0.55 * dx**1.6 - rib_slant * (x - spine_x)
    ribs = 0.5 + 0.5 * np.cos(2 * math.pi * (rib_y * 4.5 + rib_phase))
    att += 0.06 * ribs**4 * _soft(dx - spine_w * 0.8, 0.05)
    # Diaphragm and liver: a dense dome at the bottom.
    att += 0.4 * _soft(y - (dia_y + 0.7 * (x - 0.6) ** 2), 0.06)
    # Soft-tissue blobs and lung texture.
    brng = np.random.default_rng(int(blob_seed))
    for _ in range(6):
        bx, by = brng.uniform(0, 1, 2)
        s = brng.uniform(0.08, 0.25)
        att += brng.uniform(-0.06, 0.1) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
    tex = Image.fromarray(brng.normal(0, 1, (12, 12)).astype(np.float32), mode="F")
    att += 0.035 * np.asarray(tex.resize((g, g), Image.BICUBIC))
    img = Image.fromarray(att.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC)
    trans = np.exp(-np.asarray(img, dtype=np.float32))
    return (trans * _vignette(size)).astype(np.float32)


def _soft(d: np.ndarray, width: float) -> np.ndarray:
    """0 outside, 1 inside, a smooth edge of about `width` across (d > 0 inside)."""
    return 1.0 / (1.0 + np.exp(-d / (width / 4)))

