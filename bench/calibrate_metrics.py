"""Does every metric move the right way? Real against real (the floor), and real against degraded real.

    .venv/bin/python bench/calibrate_metrics.py                 # the demo's data: 3,072 phantom frames, 64 px
    .venv/bin/python bench/calibrate_metrics.py --seeds 0,1,2 --n 256

For each sample seed: n held-out (val) frames are the reference, exactly as `medsynth evaluate` judges a
generator; n training-split frames of other patients are judged against them as they are (the floor)
and degraded four ways — blurred (Gaussian, sigma 1 px), with added noise (sigma 10 grey levels), with
a white square (a quarter of the side) pasted into a third of the frames, and one frame repeated n
times. A metric is trustworthy only if every degradation moves it away from the floor; the spread of
the floor over sample seeds says how stable it is. The floor is also computed the old way (no loops:
the probe's folds grouped by MS-SSIM near-duplicates, precision/recall's neighbourhoods free to stay
inside one cine loop) to show why the loops matter.

Writes `bench/results/metrics-calibration-<size>px-<date>.{md,json}` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from medsynth.evaluate.suite import MetricsConfig, Reference, with_floor  # noqa: E402

COLUMNS = ("ratio_to_floor", "fd_efflite0", "swd", "kid_efflite0", "probe_acc_efflite0", "precision_efflite0",
           "recall_efflite0", "density_efflite0", "coverage_efflite0", "fid", "ms_ssim_fake", "collapse")
# (fid: the configured extractor's FID; offline that is the random-weight InceptionV3 fallback)
# which way a degradation must move each metric (collapse: must be raised by the repeated frame)
BETTER = {"probe_acc_efflite0": "lower", "precision_efflite0": "higher", "recall_efflite0": "higher",
          "density_efflite0": "higher", "coverage_efflite0": "higher"}


def blurred(frames: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.stack([np.rint(gaussian_filter(f.astype(np.float64), 1.0)) for f in frames]).astype(np.uint8)


def noisy(frames: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng([seed, 1]).normal(0.0, 10.0, frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def white_square(frames: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 2])
    out = frames.copy()
    side = frames.shape[1] // 4
    for i in rng.choice(len(frames), len(frames) // 3, replace=False):
        y, x = rng.integers(0, frames.shape[1] - side, 2)
        out[i, y : y + side, x : x + side] = 255
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="sample seeds (which frames are drawn)")
    ap.add_argument("--n", type=int, default=256, help="frames per side, as the demo's evaluation")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--phantom-frames", type=int, default=3072, help="the demo's data set")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parents[1] / "out" / "bench-data"))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()

    from medsynth.data.input import real_sample, resolve_dataset

    data = resolve_dataset("builtin://phantom", args.size, args.cache, seed=0,
                           phantom_frames=args.phantom_frames)
    cfg = MetricsConfig(n=args.n, feature_extractor="auto", progress=False)
    rows: dict[str, list[dict]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        held_out = real_sample(data, "val", args.n, seed)
        train = real_sample(data, "train", args.n, seed + 1, exclude=held_out)
        reference = Reference(held_out.images, cfg, held_out.loops)
        floor = reference.floor(train.images, train.loops)
        sets = {
            "real (the floor)": (train.images, train.loops),
            "blurred": (blurred(train.images), train.loops),
            "noise": (noisy(train.images, seed), train.loops),
            "white square in 1/3": (white_square(train.images, seed), train.loops),
            "one frame repeated": (np.repeat(train.images[:1], len(train.images), axis=0), None),
        }
        for name, (frames, loops) in sets.items():
            rows.setdefault(name, []).append(with_floor(reference.judge(frames, loops), floor))
            print(f"seed {seed}: {name} done", flush=True)
        old = Reference(held_out.images, cfg).judge(train.images)  # no loops: the protocol before
        rows.setdefault("real, without loops (before)", []).append(old)
    write(rows, args)


def _cell(values: list) -> str:
    if values and all(isinstance(v, bool) for v in values):
        return f"{sum(values)}/{len(values)}"
    if not values or any(not isinstance(v, (int, float)) for v in values):
        return "–"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.3g}"
    return f"{mean:.3g} ({min(values):.3g}–{max(values):.3g})"


def write(rows: dict[str, list[dict]], args: argparse.Namespace) -> None:
    seeds = args.seeds.split(",")
    lines = [f"# Metric calibration, {args.size} px phantom ({args.phantom_frames} frames), n = {args.n}, "
             f"sample seeds {', '.join(seeds)}", "",
             "Reference: n held-out (val) frames. Each row judges n training-split frames of other patients "
             "against it, as they are (the floor) or degraded. Mean (min–max) over the sample seeds; "
             "collapse: seeds that raised the alarm.", "",
             "| frames judged | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, found in rows.items():
        cells = (_cell([r[k] for r in found if k in r]) for k in COLUMNS)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    floor = rows["real (the floor)"]
    moved = []
    for name, found in rows.items():
        if name.startswith("real"):
            continue
        for key in COLUMNS[:-2]:  # not MS-SSIM (diversity, not a distance) nor the alarm
            base = [r.get(key) for r in floor]
            vals = [r.get(key) for r in found]
            if any(v is None for v in base + vals):
                continue
            up = BETTER.get(key) == "higher"
            wrong = [v for v, b in zip(vals, base, strict=True) if (v > b if up else v < b)]
            if wrong:
                moved.append(f"- {name}: {key} moved the wrong way in {len(wrong)} of {len(vals)} seeds")
    lines += ["", "Every degradation moves every metric away from the floor." if not moved else
              "Moved the wrong way (a degradation that looks better than real):", *moved]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"metrics-calibration-{args.size}px-{datetime.date.today().isoformat()}"
    stem.with_suffix(".md").write_text(text)
    clean = {k: [{m: v for m, v in r.items() if isinstance(v, (int, float, bool, str))} for r in found]
             for k, found in rows.items()}
    stem.with_suffix(".json").write_text(json.dumps(clean, indent=1, default=float))
    print(f"written {stem}.md and .json")


if __name__ == "__main__":
    main()
