"""The patient's coronary tree: Murray's-law tapering, two to three generations of bifurcations."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from medsynth.data.phantom.seeds import PATIENT, rng


@dataclass(frozen=True)
class Tree:
    """A coronary tree in its own frame: root (ostium) at the origin, the main trunk heading along +x."""

    vessels: tuple[tuple[np.ndarray, np.ndarray], ...]  # (points [k, 2], widths [k]) in units of the FOV
    bifurcations: np.ndarray  # [b, 2]


def _grow(
    r: np.random.Generator,
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
    curv = r.normal(0.0, 2.0)
    kicks = (r.normal(0.0, 12.0, k) * math.sqrt(ds)).tolist()
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
        n_side = int(r.integers(2, 5) if gen == 1 else r.integers(1, 3))
        fracs = np.sort(r.uniform(0.15, 0.75, n_side))
        side = r.choice([-1.0, 1.0])
        last = -3
        for f in fracs:
            i = max(int(f * k), last + 3)  # distinct, separated branch points
            if i >= k - 2:
                break
            last = i
            wp = float(widths[i])
            wc = wp * r.uniform(0.55, 0.8)
            # Murray's law: the parent keeps what the child did not take (r^3 conserved).
            scale = max((wp**3 - wc**3), (0.3 * wp) ** 3) ** (1 / 3) / wp
            widths[i:] *= scale
            ang = headings[i] + side * r.uniform(0.45, 1.05)
            side = -side if r.random() < 0.75 else side
            remaining = length * (1.0 - f)
            child_len = max(0.08, remaining * r.uniform(0.6, 1.1))
            bifs.append(pts[i].copy())
            _grow(r, pts[i], ang, child_len, wc, wc * 0.2, gen + 1, max_gen, vessels, bifs)
    vessels.append((pts, widths))


@lru_cache(maxsize=64)
def patient_tree(seed: int, patient: int) -> Tree:
    r = rng(seed, PATIENT, patient)
    vessels: list = []
    bifs: list = []
    # Left main: short trunk that splits into two major arteries (LAD and LCx analogues).
    lm_len = r.uniform(0.07, 0.12)
    w_lm = r.uniform(0.03, 0.038)
    _grow(r, np.zeros(2), 0.0, lm_len, w_lm, w_lm * 0.95, 3, 3, vessels, bifs)  # gen 3: no side branches
    lm_pts = vessels[-1][0]
    end = lm_pts[-1]
    end_heading = math.atan2(*(lm_pts[-1] - lm_pts[-2])[::-1])
    bifs.append(end.copy())
    w_a = w_lm * r.uniform(0.78, 0.86)
    w_b = w_lm * r.uniform(0.68, 0.78)
    _grow(
        r,
        end,
        end_heading + r.uniform(0.35, 0.7),
        r.uniform(0.55, 0.75),
        w_a,
        w_a * 0.2,
        1,
        3,
        vessels,
        bifs,
    )
    _grow(
        r,
        end,
        end_heading - r.uniform(0.6, 1.1),
        r.uniform(0.4, 0.6),
        w_b,
        w_b * 0.2,
        1,
        2,
        vessels,
        bifs,
    )
    return Tree(tuple(vessels), np.array(bifs))

