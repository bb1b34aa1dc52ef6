"""How long the full offline metric suite takes, and how it grows with the number of frames.

    .venv/bin/python bench/metrics.py                    # 2,000 vs 2,000 at 64 px, series 500..4,000
    .venv/bin/python bench/metrics.py --sizes 250,500 --size 32

"Real" frames are phantom frames (seed 0); "generated" frames are other
phantom patients (seed 1) with a little added noise, so every metric has
something to measure. Each n runs `compute_metrics` with `MetricsConfig(n=n)`
defaults (SWD with ProGAN's 128 patches/frame and 4 x 128 directions, FID/KID
and precision/recall on the `auto` extractor, MS-SSIM on n pairs per side).
The extractor is built and traced once before timing (reported as setup).
Times are wall-clock seconds on this machine; ratios are against the
smallest n of the same run, next to the ratio a linear cost would give.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from medsynth.data.phantom import phantom_array  # noqa: E402
from medsynth.evaluate.suite import MetricsConfig, compute_metrics  # noqa: E402

PARTS = ("swd", "features", "fid", "prdc", "diversity")


def frames(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    real = phantom_array(n, size, seed=0)[0]
    other = phantom_array(n, size, seed=1)[0]
    noise = np.random.default_rng(0).normal(0.0, 6.0, other.shape)
    return real, np.clip(other + noise, 0, 255).astype(np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="500,1000,2000,4000", help="frame counts per side, comma-separated")
    ap.add_argument("--size", type=int, default=64, help="frame size in pixels")
    ap.add_argument("--extractor", default="auto", help="feature extractor (see medsynth/evaluate/fid.py)")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    load_start = os.getloadavg()[0]  # other jobs on the machine slow every number below alike
    t0 = time.perf_counter()
    real, fake = frames(max(sizes), args.size)
    elapsed = time.perf_counter() - t0
    print(f"phantom frames: 2 x {max(sizes)} at {args.size} px in {elapsed:.1f} s", flush=True)

    t0 = time.perf_counter()
    warm = compute_metrics(real[:16], fake[:16], MetricsConfig(n=16, feature_extractor=args.extractor,
                                                               kid_subsets=2, progress=False))
    print(f"setup (build + trace extractor {warm['feature_extractor']}): {time.perf_counter() - t0:.1f} s",
          flush=True)

    rows = []
    for n in sizes:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        m = compute_metrics(real[:n], fake[:n], MetricsConfig(n=n, feature_extractor=args.extractor,
                                                              progress=False), timings)
        total = time.perf_counter() - t0
        rows.append((n, total, timings, m))
        print(f"n={n}: {total:.1f} s  swd={m['swd']:.3f} fid={m['fid']:.4g} kid={m['kid']:.3g}"
              f"±{m['kid_std']:.2g} P={m['precision']:.3f} R={m['recall']:.3f} "
              f"ms-ssim real/gen={m['ms_ssim_real']:.3f}/{m['ms_ssim_fake']:.3f}", flush=True)

    base_n, base_t = rows[0][0], rows[0][1]
    print(f"\nfull metric suite, {args.size} px, {warm['feature_extractor']}, {os.cpu_count()} CPUs, "
          f"load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end "
          f"(wall seconds; ratio vs n={base_n} of this run)")
    head = f"{'n/side':>7} {'total':>8} " + " ".join(f"{p:>9}" for p in PARTS)
    print(head + f" {'ms/frame':>9} {'ratio':>6} {'linear':>6}")
    for n, total, timings, _ in rows:
        parts = " ".join(f"{timings.get(p, 0.0):9.1f}" for p in PARTS)
        per_frame = 1e3 * total / (2 * n)
        print(f"{n:7d} {total:8.1f} {parts} {per_frame:9.1f} {total / base_t:6.2f} {n / base_n:6.2f}")


if __name__ == "__main__":
    main()
