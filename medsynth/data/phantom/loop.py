"""A cine loop: one projection of the patient's tree, the catheter hooked into its ostium, the body's
parameters, and the cardiac motion that moves them frame by frame."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medsynth.data.phantom.seeds import BODY, LOOP, rng
from medsynth.data.phantom.tree import patient_tree


@dataclass(frozen=True)
class Loop:
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


def bezier(p: np.ndarray, m: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, m)[:, None]
    return ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


@lru_cache(maxsize=64)
def projected_loop(seed: int, loop: int, loops_per_patient: int) -> Loop:
    patient = loop // loops_per_patient
    tree = patient_tree(seed, patient)
    prng = rng(seed, BODY, patient)  # the patient's body and usual projection
    base_angle = prng.uniform(0.9, 1.9)  # trunk heads down-right to down-left (LAO/RAO-like)
    body = (
        prng.uniform(-0.08, 0.08),
        prng.uniform(0.08, 0.12),
        prng.uniform(0.72, 0.88),
        prng.uniform(0.8, 1.2),
    )
    r = rng(seed, LOOP, loop)

    # Projection: rotation, foreshortening along a random axis, zoom.
    theta = base_angle + r.normal(0.0, 0.35)
    axis = r.uniform(0.0, math.pi)
    fore = r.uniform(0.7, 1.0)
    zoom = r.uniform(0.85, 1.1)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    ax = np.array([[math.cos(axis), -math.sin(axis)], [math.sin(axis), math.cos(axis)]])
    squash = ax @ np.diag([fore, 1.0]) @ ax.T
    mat = zoom * squash @ rot
    all_pts = np.concatenate([v[0] for v in tree.vessels]) @ mat.T
    lo, hi = all_pts.min(0), all_pts.max(0)
    target = np.array([0.5, 0.52]) + r.normal(0.0, 0.04, 2)
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
    p2 = root - d * r.uniform(0.12, 0.2) + np.array([0.0, -0.05])
    if r.random() < 0.75:  # femoral: up from the bottom edge, then a hook over into the ostium
        off = r.uniform(0.1, 0.3) * r.choice([-1.0, 1.0])  # shaft beside the ostium: an open hook
        sx = root[0] + (off if 0.05 < root[0] + off < 0.95 else -off)
        p0 = np.array([sx, 1.08])
        p1 = np.array([sx + r.uniform(-0.1, 0.1), min(root[1] - r.uniform(0.05, 0.2), 0.7)])
    else:  # radial: in from a side edge, over the top
        ex = 1.08 if r.random() < 0.5 else -0.08
        sy = r.uniform(0.05, 0.4)
        p0 = np.array([ex, sy])
        p1 = np.array([root[0] + (ex - root[0]) * r.uniform(0.2, 0.5), sy - r.uniform(0.0, 0.1)])
    catheter = bezier(np.stack([p0, p1, p2, p3]), 64)
    cw = np.linspace(0.0, 1.0, 64) ** 2

    center = (vessels[0][0][0] + (lo + hi) / 2 + root) / 2
    motion = (
        r.uniform(0.05, 0.09),  # contraction at end-systole
        r.uniform(0.02, 0.06),  # twist (rad)
        r.uniform(0.008, 0.02),  # translation
        r.uniform(0.004, 0.01),  # warp amplitude
        r.uniform(0.0, 2 * math.pi),  # phase at frame 0
        r.uniform(0.8, 2.0),  # warp spatial frequencies
        r.uniform(0.8, 2.0),
    )
    anatomy = (
        0.5 + body[0] + 0.45 * (theta - 1.4) + r.normal(0, 0.02),  # spine x: angulation moves it
        body[1],  # spine half-width
        body[2] + r.normal(0, 0.03),  # diaphragm height
        body[3],  # body thickness (overall attenuation)
        float(r.integers(2**31)),  # seed of the soft blobs
        r.normal(0, 0.15),  # rib slant
        r.uniform(0.0, 1.0),  # rib phase
        center[0] + r.normal(0, 0.03),
        center[1] + r.normal(0, 0.03),
        r.uniform(0.28, 0.38),  # heart radius
    )
    return Loop(
        patient,
        vessels,
        bifs,
        catheter,
        cw,
        r.uniform(0.008, 0.011),
        center,
        motion,
        r.uniform(0.8, 1.15),
        r.uniform(0.6, 1.6),
        anatomy,
    )


def deform(p: np.ndarray, lp: Loop, phase: float) -> np.ndarray:
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

