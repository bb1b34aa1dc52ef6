"""A frame: the loop's vessels and catheter drawn at one cardiac phase over the body, imaged as
transmitted X-rays (Beer-Lambert), with quantum noise, shown MONOCHROME2 (vessels dark)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from medsynth.data.phantom.body import background
from medsynth.data.phantom.loop import deform, projected_loop
from medsynth.data.phantom.seeds import FRAME, check_positive, check_seed, rng
from medsynth.errors import ConfigError
from medsynth.sizes import check_size

FRAMES_PER_LOOP = 8  # defaults of the built-in data set: 8 frames per cine loop, 2 loops per patient
LOOPS_PER_PATIENT = 2

# Opacity coding of the supersampled drawing canvas (uint8): vessels up to _VESSEL_MAX, catheter 255.
_VESSEL_MAX = 175.0


@dataclass(frozen=True, eq=False)
class PhantomFrame:
    """One rendered frame with its ground truth; key points are pixel coordinates (x, y) of this frame."""

    pixels: np.ndarray  # uint8 [size, size]
    keypoints: dict  # {"bifurcations": [[x, y], ...], "catheter_tip": [x, y]}
    patient: str
    loop: int  # global index of the cine loop (unique across patients)
    frame: int  # index within its loop

    def meta(self, seed: int | None = None) -> dict:
        """What goes into the JSON beside the image."""
        out = {
            "keypoints": self.keypoints,
            "patient": self.patient,
            "loop": self.loop,
            "frame": self.frame,
            "size": int(self.pixels.shape[0]),
            "synthetic": True,
            "source": "medsynth phantom",
        }
        if seed is not None:
            out["seed"] = seed
        return out



def patient_name(patient_index: int) -> str:
    return f"P{patient_index:04d}"


# --- rendering --------------------------------------------------------------------------------------
def _supersample(size: int) -> int:
    return 4 if size <= 64 else 2


@lru_cache(maxsize=8)
def _cap_angles(k: int) -> np.ndarray:
    return np.linspace(math.pi / 2, -math.pi / 2, k + 2)[1:-1]


def _tube_polygon(p: np.ndarray, hw: np.ndarray, cap_points: int = 5) -> np.ndarray:
    """Closed outline of a tapered tube with round caps around centre line p (half-widths hw)."""
    d = np.empty_like(p)
    d[1:-1] = p[2:] - p[:-2]
    d[0], d[-1] = p[1] - p[0], p[-1] - p[-2]
    ang = np.arctan2(d[:, 1], d[:, 0])
    cap = _cap_angles(cap_points)
    centres = np.concatenate([p, np.repeat(p[-1:], cap_points, 0), p[::-1], np.repeat(p[:1], cap_points, 0)])
    radii = np.concatenate([hw, np.full(cap_points, hw[-1]), hw[::-1], np.full(cap_points, hw[0])])
    angles = np.concatenate(
        [ang + math.pi / 2, ang[-1] + cap, ang[::-1] - math.pi / 2, ang[0] + math.pi + cap]
    )
    return centres + radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], 1)


@dataclass(frozen=True)
class _Scene:
    """Everything of a loop at one size that does not change frame to frame (normalised coordinates)."""

    verts: np.ndarray  # [V, 2] all polygon vertices, vessels and catheter
    weights: np.ndarray  # [V] how much each vertex follows the heart (catheter: 0 at the edge)
    polys: tuple[tuple[int, int, int], ...]  # (start, end, fill) in drawing order


@lru_cache(maxsize=16)
def _scene(seed: int, loop: int, loops_per_patient: int, size: int) -> _Scene:
    lp = projected_loop(seed, loop, loops_per_patient)
    floor = 0.6 / size  # widths get a floor of ~0.6 output pixel so the finest branches survive at 64 px
    tubes = []
    for pts, w in lp.vessels:
        hw = np.sqrt(w**2 + floor**2) / 2
        # Absorption follows the diameter the beam crosses: thin vessels are fainter.
        val = _VESSEL_MAX * min(1.0, 0.4 + float(w[0]) / 0.03)
        tubes.append((val, pts, hw))
    tubes.sort(key=lambda t: t[0])  # denser (larger) vessels end up on top at the junctions
    parts, weights, polys, at = [], [], [], 0

    def add(poly: np.ndarray, weight: np.ndarray | float, fill: float) -> None:
        nonlocal at
        parts.append(poly)
        weights.append(np.broadcast_to(np.asarray(weight, dtype=np.float64), (len(poly),)))
        polys.append((at, at + len(poly), int(round(min(fill, 255)))))
        at += len(poly)

    c = lp.contrast
    for val, pts, hw in tubes:  # vessel wall: partial opacity (a cylinder is thinnest at its rim)
        add(_tube_polygon(pts, hw), 1.0, val * c * 0.6)
    for val, pts, hw in tubes:  # lumen core
        add(_tube_polygon(pts, hw * 0.6), 1.0, val * c)
    chw = max(lp.catheter_width, 1.1 / size) / 2
    cat = lp.catheter
    m = len(cat)
    cat_poly = _tube_polygon(cat, np.full(m, chw), cap_points=3)
    cat_w = np.concatenate([lp.catheter_weight, np.ones(3), lp.catheter_weight[::-1], np.zeros(3)])
    add(cat_poly, cat_w, 255)
    tip = cat[-1] + chw * 1.5 * np.stack(
        [np.cos(np.linspace(0, 2 * math.pi, 9)[:-1]), np.sin(np.linspace(0, 2 * math.pi, 9)[:-1])], 1
    )
    add(tip, 1.0, 255)  # radio-opaque tip marker
    return _Scene(np.concatenate(parts), np.concatenate(weights), tuple(polys))


# Noise is the sum of two uniform random bytes (triangular: nearly Gaussian, and 5x cheaper to draw):
# mean 255, standard deviation sqrt(2 * (256**2 - 1) / 12).
_NOISE_SCALE = 1.0 / math.sqrt(2 * (256**2 - 1) / 12)


_ABSORB = np.exp(-2.3 * np.arange(256, dtype=np.float32) / 255.0)  # Beer-Lambert per opacity level


def _locate(index: int, frames_per_loop: int, loops_per_patient: int) -> tuple[int, int, int]:
    loop, frame = divmod(index, frames_per_loop)
    return loop // loops_per_patient, loop, frame


def render_frame(
    size: int,
    seed: int,
    index: int,
    frames_per_loop: int = FRAMES_PER_LOOP,
    loops_per_patient: int = LOOPS_PER_PATIENT,
) -> PhantomFrame:
    """Frame `index` of the data set `(seed, frames_per_loop, loops_per_patient)` at `size` pixels."""
    size = check_size(size, "--size")
    seed = check_seed(seed)
    frames_per_loop = check_positive(frames_per_loop, "frames_per_loop")
    loops_per_patient = check_positive(loops_per_patient, "loops_per_patient")
    if index < 0:
        raise ConfigError(f"frame index must be >= 0, got {index}")
    patient, loop, frame = _locate(index, frames_per_loop, loops_per_patient)
    lp = projected_loop(seed, loop, loops_per_patient)
    scene = _scene(seed, loop, loops_per_patient, size)
    noise_rng = rng(seed, FRAME, index)
    phase = 2 * math.pi * frame / frames_per_loop

    # Geometry of this cardiac phase, drawn supersampled for anti-aliasing.
    ss = _supersample(size)
    big = size * ss
    v = scene.verts
    nv, nb = len(v), len(lp.bifurcations)
    moved = deform(np.concatenate([v, lp.bifurcations, lp.catheter[-1:]]), lp, phase)
    v = v + (moved[:nv] - v) * scene.weights[:, None]
    flat = (v * big - 0.5).ravel().tolist()
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for s, e, fill in scene.polys:
        draw.polygon(flat[2 * s : 2 * e], fill=fill)
    opacity = np.asarray(canvas.reduce(ss) if ss > 1 else canvas)

    # Image formation: transmitted beam through body and contrast, quantum noise (variance proportional to
    # the signal; a bigger pixel collects more photons, so coarse frames are less noisy), display.
    trans = background(seed, loop, loops_per_patient, size) * _ABSORB[opacity]
    photons = lp.photons * 900.0 * (size / 256.0) ** -2
    raw = np.frombuffer(noise_rng.bytes(2 * size * size), np.uint8).reshape(2, size, size)
    noise = (raw[0].astype(np.float32) + raw[1]) - 255.0
    signal = trans + np.sqrt(trans * (1.0 / photons)) * (noise * _NOISE_SCALE)
    pixels = np.clip(signal * (255.0 * 1.25) + 8.0, 0, 255).astype(np.uint8)

    bif = moved[nv : nv + nb] * size - 0.5
    inside = np.all((bif >= 0) & (bif <= size - 1), axis=1)
    tip = moved[-1] * size - 0.5
    keypoints = {
        "bifurcations": [[round(float(x), 3), round(float(y), 3)] for x, y in bif[inside]],
        "catheter_tip": [round(float(tip[0]), 3), round(float(tip[1]), 3)],
    }
    return PhantomFrame(pixels, keypoints, patient_name(patient), loop, frame)


def phantom_frames(
    n: int,
    size: int,
    seed: int = 0,
    frames_per_loop: int = FRAMES_PER_LOOP,
    loops_per_patient: int = LOOPS_PER_PATIENT,
) -> Iterator[PhantomFrame]:
    """The first `n` frames of the data set, in order (loop by loop, patient by patient).

    Arguments are checked now, not at the first `next()`, so bad input fails where it is given.
    """
    n = check_positive(n, "-n")
    size = check_size(size, "--size")
    seed = check_seed(seed)
    check_positive(frames_per_loop, "frames_per_loop")
    check_positive(loops_per_patient, "loops_per_patient")
    return (render_frame(size, seed, i, frames_per_loop, loops_per_patient) for i in range(n))


def phantom_array(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, list[dict]]:
    """The built-in data set's first `n` frames as one uint8 array [n, size, size] plus their metadata."""
    frames = list(phantom_frames(n, size, seed))
    return np.stack([f.pixels for f in frames]), [f.meta(seed) for f in frames]

