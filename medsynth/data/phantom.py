"""Procedural X-ray angiography phantom: the built-in data set (`builtin://phantom`) and the tests' data.

Real angiography cannot ship with the project, so the demo, the tests and the benchmarks use frames
drawn from a small physical model: a contrast-filled coronary tree (Murray's-law tapering, two to three
generations of bifurcations) and a catheter in front of soft anatomy, imaged as transmitted X-rays
(Beer-Lambert), with quantum noise and image-intensifier vignetting, shown MONOCHROME2 (vessels dark).

Frames come in cine loops (one tree, beating: a smooth contraction/twist/warp per cardiac phase) and
loops come in patients (one tree and one body seen from a different projection per loop), so that
splitting by patient, not by frame, can be tested. Every frame is a pure function of
`(size, seed, index)`: frame i does not depend on how many frames are asked for, and frames can be
rendered in any order or in parallel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medsynth.errors import ConfigError
from medsynth.sizes import check_size

FORMATS = ("png", "dicom")
FRAME_TIME_MS = 66.7  # 15 frames/s, a common cine rate
FRAMES_PER_LOOP = 8  # defaults of the built-in data set: 8 frames per cine loop, 2 loops per patient
LOOPS_PER_PATIENT = 2

# Stream tags: each random decision draws from its own stream, so adding a decision to one stage does
# not shift the numbers of another.
_PATIENT, _LOOP, _FRAME, _BODY = 1, 2, 3, 4

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


# --- validation -----------------------------------------------------------------------------------
def _check_seed(seed: int) -> int:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_positive(value: int, flag: str) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{flag} must be an integer >= 1, got {value!r}")
    return int(value)


def patient_name(patient_index: int) -> str:
    return f"P{patient_index:04d}"


def _rng(seed: int, tag: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, tag, index]))


# --- geometry: the patient's coronary tree ---------------------------------------------------------
@dataclass(frozen=True)
class _Tree:
    """A coronary tree in its own frame: root (ostium) at the origin, the main trunk heading along +x."""

    vessels: tuple[tuple[np.ndarray, np.ndarray], ...]  # (points [k, 2], widths [k]) in units of the FOV
    bifurcations: np.ndarray  # [b, 2]


def _grow(
    rng: np.random.Generator,
    start: np.ndarray,
    heading: float,
    length: float,
    w0: float,
    w1: float,
    gen: int,
    max_gen: int,
    vessels: list,
    bifs: list,
) -> None:
    """One vessel: a smooth curve (random walk in curvature) that tapers and sheds side branches."""
    ds = 0.012
    k = max(4, int(length / ds))
    curv = rng.normal(0.0, 2.0)
    kicks = (rng.normal(0.0, 12.0, k) * math.sqrt(ds)).tolist()
    curvs = np.empty(k)
    for i in range(k):  # k is small (tens); the walk is sequential by nature
        curv = min(7.0, max(-7.0, 0.97 * curv + kicks[i]))
        curvs[i] = curv
    headings = heading + np.concatenate([[0.0], np.cumsum(curvs[:-1] * ds)])
    steps = np.stack([np.cos(headings), np.sin(headings)], axis=1) * ds
    pts = start + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    t = np.linspace(0.0, 1.0, k + 1)
    widths = w0 + (w1 - w0) * t

    if gen < max_gen:
        n_side = int(rng.integers(2, 5) if gen == 1 else rng.integers(1, 3))
        fracs = np.sort(rng.uniform(0.15, 0.75, n_side))
        side = rng.choice([-1.0, 1.0])
        last = -3
        for f in fracs:
            i = max(int(f * k), last + 3)  # distinct, separated branch points
            if i >= k - 2:
                break
            last = i
            wp = float(widths[i])
            wc = wp * rng.uniform(0.55, 0.8)
            # Murray's law: the parent keeps what the child did not take (r^3 conserved).
            scale = max((wp**3 - wc**3), (0.3 * wp) ** 3) ** (1 / 3) / wp
            widths[i:] *= scale
            ang = headings[i] + side * rng.uniform(0.45, 1.05)
            side = -side if rng.random() < 0.75 else side
            remaining = length * (1.0 - f)
            child_len = max(0.08, remaining * rng.uniform(0.6, 1.1))
            bifs.append(pts[i].copy())
            _grow(rng, pts[i], ang, child_len, wc, wc * 0.2, gen + 1, max_gen, vessels, bifs)
    vessels.append((pts, widths))


@lru_cache(maxsize=64)
def _patient_tree(seed: int, patient: int) -> _Tree:
    rng = _rng(seed, _PATIENT, patient)
    vessels: list = []
    bifs: list = []
    # Left main: short trunk that splits into two major arteries (LAD and LCx analogues).
    lm_len = rng.uniform(0.07, 0.12)
    w_lm = rng.uniform(0.03, 0.038)
    _grow(rng, np.zeros(2), 0.0, lm_len, w_lm, w_lm * 0.95, 3, 3, vessels, bifs)  # gen 3: no side branches
    lm_pts = vessels[-1][0]
    end = lm_pts[-1]
    end_heading = math.atan2(*(lm_pts[-1] - lm_pts[-2])[::-1])
    bifs.append(end.copy())
    w_a = w_lm * rng.uniform(0.78, 0.86)
    w_b = w_lm * rng.uniform(0.68, 0.78)
    _grow(
        rng,
        end,
        end_heading + rng.uniform(0.35, 0.7),
        rng.uniform(0.55, 0.75),
        w_a,
        w_a * 0.2,
        1,
        3,
        vessels,
        bifs,
    )
    _grow(
        rng,
        end,
        end_heading - rng.uniform(0.6, 1.1),
        rng.uniform(0.4, 0.6),
        w_b,
        w_b * 0.2,
        1,
        2,
        vessels,
        bifs,
    )
    return _Tree(tuple(vessels), np.array(bifs))


# --- a loop: one projection of the patient's tree, plus catheter, anatomy and motion ----------------
@dataclass(frozen=True)
class _Loop:
    patient: int
    vessels: tuple[tuple[np.ndarray, np.ndarray], ...]  # image-normalised points [k,2] in [0,1], widths
    bifurcations: np.ndarray  # [b, 2] image-normalised
    catheter: np.ndarray  # [m, 2] image-normalised, from outside the edge to the tip (last point)
    catheter_weight: np.ndarray  # [m] how much each catheter point follows the heart (0 at the edge)
    catheter_width: float
    center: np.ndarray  # centre of the cardiac motion
    motion: tuple[float, ...]  # contraction, twist, shift, warp, phase0, fx, fy
    contrast: float
    photons: float
    anatomy: tuple  # parameters of the background, see _background


def _bezier(p: np.ndarray, m: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, m)[:, None]
    return ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


@lru_cache(maxsize=64)
def _loop(seed: int, loop: int, loops_per_patient: int) -> _Loop:
    patient = loop // loops_per_patient
    tree = _patient_tree(seed, patient)
    prng = _rng(seed, _BODY, patient)  # the patient's body and usual projection
    base_angle = prng.uniform(0.9, 1.9)  # trunk heads down-right to down-left (LAO/RAO-like)
    body = (
        prng.uniform(-0.08, 0.08),
        prng.uniform(0.08, 0.12),
        prng.uniform(0.72, 0.88),
        prng.uniform(0.8, 1.2),
    )
    rng = _rng(seed, _LOOP, loop)

    # Projection: rotation, foreshortening along a random axis, zoom.
    theta = base_angle + rng.normal(0.0, 0.35)
    axis = rng.uniform(0.0, math.pi)
    fore = rng.uniform(0.7, 1.0)
    zoom = rng.uniform(0.85, 1.1)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    ax = np.array([[math.cos(axis), -math.sin(axis)], [math.sin(axis), math.cos(axis)]])
    squash = ax @ np.diag([fore, 1.0]) @ ax.T
    mat = zoom * squash @ rot
    all_pts = np.concatenate([v[0] for v in tree.vessels]) @ mat.T
    lo, hi = all_pts.min(0), all_pts.max(0)
    target = np.array([0.5, 0.52]) + rng.normal(0.0, 0.04, 2)
    root = target - (lo + hi) / 2
    root = np.clip(root, 0.15, 0.85)
    wscale = zoom * math.sqrt(fore)
    vessels = tuple((p @ mat.T + root, w * wscale) for p, w in tree.vessels)
    bifs = tree.bifurcations @ mat.T + root

    # Catheter: enters from an edge (femoral: from below; radial: from a side) and hooks into the ostium
    # along the trunk's axis; its tip is the ostium.
    trunk = vessels[0][0]
    d = trunk[min(3, len(trunk) - 1)] - trunk[0]
    d = d / (np.linalg.norm(d) + 1e-9)
    p3 = root.copy()
    p2 = root - d * rng.uniform(0.12, 0.2) + np.array([0.0, -0.05])
    if rng.random() < 0.75:  # femoral: up from the bottom edge, then a hook over into the ostium
        off = rng.uniform(0.1, 0.3) * rng.choice([-1.0, 1.0])  # shaft beside the ostium: an open hook
        sx = root[0] + (off if 0.05 < root[0] + off < 0.95 else -off)
        p0 = np.array([sx, 1.08])
        p1 = np.array([sx + rng.uniform(-0.1, 0.1), min(root[1] - rng.uniform(0.05, 0.2), 0.7)])
    else:  # radial: in from a side edge, over the top
        ex = 1.08 if rng.random() < 0.5 else -0.08
        sy = rng.uniform(0.05, 0.4)
        p0 = np.array([ex, sy])
        p1 = np.array([root[0] + (ex - root[0]) * rng.uniform(0.2, 0.5), sy - rng.uniform(0.0, 0.1)])
    catheter = _bezier(np.stack([p0, p1, p2, p3]), 64)
    cw = np.linspace(0.0, 1.0, 64) ** 2

    center = (vessels[0][0][0] + (lo + hi) / 2 + root) / 2
    motion = (
        rng.uniform(0.05, 0.09),  # contraction at end-systole
        rng.uniform(0.02, 0.06),  # twist (rad)
        rng.uniform(0.008, 0.02),  # translation
        rng.uniform(0.004, 0.01),  # warp amplitude
        rng.uniform(0.0, 2 * math.pi),  # phase at frame 0
        rng.uniform(0.8, 2.0),  # warp spatial frequencies
        rng.uniform(0.8, 2.0),
    )
    anatomy = (
        0.5 + body[0] + 0.45 * (theta - 1.4) + rng.normal(0, 0.02),  # spine x: angulation moves it
        body[1],  # spine half-width
        body[2] + rng.normal(0, 0.03),  # diaphragm height
        body[3],  # body thickness (overall attenuation)
        float(rng.integers(2**31)),  # seed of the soft blobs
        rng.normal(0, 0.15),  # rib slant
        rng.uniform(0.0, 1.0),  # rib phase
        center[0] + rng.normal(0, 0.03),
        center[1] + rng.normal(0, 0.03),
        rng.uniform(0.28, 0.38),  # heart radius
    )
    return _Loop(
        patient,
        vessels,
        bifs,
        catheter,
        cw,
        rng.uniform(0.008, 0.011),
        center,
        motion,
        rng.uniform(0.8, 1.15),
        rng.uniform(0.6, 1.6),
        anatomy,
    )


def _deform(p: np.ndarray, lp: _Loop, phase: float) -> np.ndarray:
    """Cardiac motion: contraction towards the heart's centre, twist, shift and a smooth warp."""
    a, b, t, w, ph0, fx, fy = lp.motion
    ph = phase + ph0
    s = 1.0 - a * (0.5 - 0.5 * math.cos(ph))
    r = b * math.sin(ph)
    rm = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]]) * s
    q = (p - lp.center) @ rm.T + lp.center
    q = q + t * np.array([math.sin(ph), 0.5 * math.sin(2 * ph)])
    warp = np.stack([np.sin(2 * math.pi * fx * p[:, 1] + ph), np.cos(2 * math.pi * fy * p[:, 0] + ph)], 1)
    return q + w * warp


# --- the background: anatomy, exposure, vignetting ------------------------------------------------
@lru_cache(maxsize=4)
def _vignette(size: int) -> np.ndarray:
    """Image-intensifier falloff: darker towards the edges, dark corners outside the round input field."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    r = np.sqrt(c[None, :] ** 2 + c[:, None] ** 2)
    v = 1.0 - 0.28 * r**2
    field = 1.0 / (1.0 + np.exp((r - 1.22) / 0.04))
    return (v * (0.15 + 0.85 * field)).astype(np.float32)


@lru_cache(maxsize=16)
def _background(seed: int, loop: int, loops_per_patient: int, size: int) -> np.ndarray:
    """Transmitted fraction of the beam through the body (no vessels), float32 [size, size]."""
    lp = _loop(seed, loop, loops_per_patient)
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
    lp = _loop(seed, loop, loops_per_patient)
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
    seed = _check_seed(seed)
    frames_per_loop = _check_positive(frames_per_loop, "frames_per_loop")
    loops_per_patient = _check_positive(loops_per_patient, "loops_per_patient")
    if index < 0:
        raise ConfigError(f"frame index must be >= 0, got {index}")
    patient, loop, frame = _locate(index, frames_per_loop, loops_per_patient)
    lp = _loop(seed, loop, loops_per_patient)
    scene = _scene(seed, loop, loops_per_patient, size)
    rng = _rng(seed, _FRAME, index)
    phase = 2 * math.pi * frame / frames_per_loop

    # Geometry of this cardiac phase, drawn supersampled for anti-aliasing.
    ss = _supersample(size)
    big = size * ss
    v = scene.verts
    nv, nb = len(v), len(lp.bifurcations)
    moved = _deform(np.concatenate([v, lp.bifurcations, lp.catheter[-1:]]), lp, phase)
    v = v + (moved[:nv] - v) * scene.weights[:, None]
    flat = (v * big - 0.5).ravel().tolist()
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for s, e, fill in scene.polys:
        draw.polygon(flat[2 * s : 2 * e], fill=fill)
    opacity = np.asarray(canvas.reduce(ss) if ss > 1 else canvas)

    # Image formation: transmitted beam through body and contrast, quantum noise (variance proportional to
    # the signal; a bigger pixel collects more photons, so coarse frames are less noisy), display.
    trans = _background(seed, loop, loops_per_patient, size) * _ABSORB[opacity]
    photons = lp.photons * 900.0 * (size / 256.0) ** -2
    raw = np.frombuffer(rng.bytes(2 * size * size), np.uint8).reshape(2, size, size)
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
    n = _check_positive(n, "-n")
    size = check_size(size, "--size")
    seed = _check_seed(seed)
    _check_positive(frames_per_loop, "frames_per_loop")
    _check_positive(loops_per_patient, "loops_per_patient")
    return (render_frame(size, seed, i, frames_per_loop, loops_per_patient) for i in range(n))


def phantom_array(
    n: int,
    size: int,
    seed: int = 0,
    frames_per_loop: int = FRAMES_PER_LOOP,
    loops_per_patient: int = LOOPS_PER_PATIENT,
) -> tuple[np.ndarray, list[dict]]:
    """All `n` frames as one uint8 array [n, size, size] plus their metadata, for training code."""
    frames = list(phantom_frames(n, size, seed, frames_per_loop, loops_per_patient))
    return np.stack([f.pixels for f in frames]), [f.meta(seed) for f in frames]


# --- writing ----------------------------------------------------------------------------------------
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

    n = _check_positive(n, "-n")
    size = check_size(size, "--size")
    seed = _check_seed(seed)
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
