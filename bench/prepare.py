"""`prepare` throughput and peak memory: 1,000 vs 10,000 phantom DICOM frames at 256 px.

The claim under test (issue 7): prepare streams, so its peak memory does not grow with the number of
input files, and it uses every core for decoding. Each size runs in a fresh process, which reports its
own peak RSS and the largest worker's; the ratio 10k/1k of peak RSS should stay near 1.0.

    .venv/bin/python bench/prepare.py [--sizes 1000,10000] [--image-size 256] [--workdir DIR]

Inputs are written once with `medsynth phantom --format dicom` (8-frame XA loops) and kept in the
work dir; outputs go to a fresh folder per run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(src: str, out: str, image_size: int, workers: int | None) -> None:
    from medsynth.data.prepare import PrepareConfig, prepare

    t0 = time.perf_counter()
    ds = prepare(PrepareConfig(source=src, out=out, image_size=image_size, workers=workers, min_frames=1))
    seconds = time.perf_counter() - t0
    frames = json.loads((Path(ds) / "manifest.json").read_text())["frames"]
    print(
        json.dumps(
            {
                "frames": frames,
                "seconds": seconds,
                "main_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medsynth-bench-prepare"))
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.image_size, args.workers)
        return

    from medsynth.data.phantom import write_phantom

    work = Path(args.workdir)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        src = work / f"phantom-dicom-{n}-{args.image_size}"
        if not (src / "phantom.json").exists():
            t0 = time.perf_counter()
            write_phantom(src, n=n, size=args.image_size, seed=0, fmt="dicom")
            print(f"wrote {n} phantom DICOM frames in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        out = work / f"out-{n}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, __file__, "--child", str(src), str(out), "--image-size", str(args.image_size)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        result = subprocess.run(cmd, check=True, capture_output=True, text=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        row["files"] = sum(1 for f in src.iterdir() if f.suffix == ".dcm")
        shutil.rmtree(out, ignore_errors=True)
        rows.append(row)

    print(f"prepare, phantom DICOM (8-frame XA loops) at {args.image_size} px, {os.cpu_count()} cores")
    header = ("frames", "files", "seconds", "frames/s", "main RSS MB", "worker RSS MB")
    print("{:>8} {:>6} {:>8} {:>9} {:>12} {:>14}".format(*header))
    for r in rows:
        print(
            f"{r['frames']:>8} {r['files']:>6} {r['seconds']:>8.1f} {r['frames'] / r['seconds']:>9.0f} "
            f"{r['main_rss_mb']:>12.0f} {r['worker_rss_mb']:>14.0f}"
        )
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        print(
            f"ratio {b['frames']}/{a['frames']} frames: "
            f"frames/s x{(b['frames'] / b['seconds']) / (a['frames'] / a['seconds']):.2f}, "
            f"main peak RSS x{b['main_rss_mb'] / a['main_rss_mb']:.2f}, "
            f"worker peak RSS x{b['worker_rss_mb'] / max(a['worker_rss_mb'], 1):.2f}"
        )


if __name__ == "__main__":
    main()
