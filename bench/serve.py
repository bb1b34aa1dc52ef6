"""Serving overhead: `medsynth serve` over REST and gRPC against calling the SavedModel in-process.

For each image size (64 and 256 px, the paper's generator: latent 100, width 8, random weights) this
exports the model, starts `medsynth serve` in a subprocess, and times the same request three ways in
turn (round robin, so that load from other processes hits all three alike):

- in-process: the loaded SavedModel's `png_from_seed` signature, PNG bytes out;
- REST: `Client.predict_png` (JSON over a keep-alive HTTP connection, PNGs as {"b64": ...});
- gRPC: the same through TF Serving's PredictionService.

It prints p50/p99 latency, images/s and the overhead of each protocol over in-process (target: at most
10 % at n = 16). With --json-pixels it also times REST on `generate_from_seed`, whose `images` output
travels as a JSON array of numbers, to show why clients ask for PNGs.

    .venv/bin/python bench/serve.py [--sizes 64 256] [--reps 30] [--json-pixels] [--out results.json]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base: Path, rest: int, grpc: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsynth.cli", "serve", "--model-base-path", str(base),
         "--rest-port", str(rest), "--grpc-port", str(grpc), "--host", "127.0.0.1",
         "--file-system-poll-wait-seconds", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise SystemExit("medsynth serve did not start:\n" + "".join(lines))
        lines.append(line)
        if line.startswith("serving "):
            return proc


def stats(seconds: list[float], n: int) -> dict[str, float]:
    a = np.asarray(seconds)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
            "images_per_s": float(n * len(a) / a.sum()), "reps": len(a)}


def bench_size(size: int, reps: dict[int, int], json_pixels: bool, work: Path) -> list[dict]:
    import tensorflow as tf

    from medsynth.serving.client import Client
    from medsynth.serving.export import export_random_generator

    base = work / f"generator{size}"
    t0 = time.perf_counter()
    export_random_generator(base / "1", image_size=size, latent_dim=100, width=8, seed=0)
    print(f"[{size} px] exported in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    local = tf.saved_model.load(str(base / "1"))
    png_sig, full_sig = local.signatures["png_from_seed"], local.signatures["generate_from_seed"]
    rest_port, grpc_port = free_port(), free_port()
    server = start_server(base, rest_port, grpc_port)
    rows = []
    try:
        rest = Client(endpoint=f"http://127.0.0.1:{rest_port}", max_per_request=64)
        grpc = Client(grpc=f"127.0.0.1:{grpc_port}", max_per_request=64)
        raw = http.client.HTTPConnection("127.0.0.1", rest_port, timeout=600)

        def in_process(seeds: list[int]) -> list[bytes]:
            return list(png_sig(seed=tf.constant(seeds, tf.int64))["png_bytes"].numpy())

        def in_process_pixels(seeds: list[int]) -> np.ndarray:
            return full_sig(seed=tf.constant(seeds, tf.int64))["images"].numpy()

        def rest_pixels(seeds: list[int]) -> np.ndarray:
            body = json.dumps({"signature_name": "generate_from_seed", "instances": seeds})
            raw.request("POST", "/v1/models/generator/versions/1:predict", body=body)
            doc = json.loads(raw.getresponse().read())
            return np.array([p["images"] for p in doc["predictions"]], np.uint8)

        paths = {"in-process": in_process, "REST": lambda s: rest.predict_png(s, 1),
                 "gRPC": lambda s: grpc.predict_png(s, 1)}
        if json_pixels:
            paths |= {"in-process (pixels)": in_process_pixels, "REST (pixels as JSON)": rest_pixels}
        for n, count in reps.items():
            seeds = list(range(n))
            outs = {name: fn(seeds) for name, fn in paths.items()}  # warm every path
            for _ in range(2):
                for fn in paths.values():
                    fn(seeds)
            assert outs["REST"] == outs["gRPC"] == outs["in-process"], "protocols disagree on the bytes"
            times: dict[str, list[float]] = {name: [] for name in paths}
            for rep in range(count):
                for name, fn in paths.items():
                    s = [rep * 1000 + k for k in seeds]
                    t = time.perf_counter()
                    fn(s)
                    times[name].append(time.perf_counter() - t)
            base_stats = stats(times["in-process"], n)
            pix_stats = stats(times["in-process (pixels)"], n) if json_pixels else None
            for name in paths:
                st = stats(times[name], n)
                ref = pix_stats if "pixels" in name else base_stats
                st["overhead_p50"] = st["p50_ms"] / ref["p50_ms"] - 1
                rows.append({"size": size, "n": n, "path": name, **st})
                print(f"[{size} px] n={n:<3} {name:<22} p50 {st['p50_ms']:8.1f} ms  "
                      f"p99 {st['p99_ms']:8.1f} ms  {st['images_per_s']:8.1f} img/s  "
                      f"overhead {st['overhead_p50']:+6.1%}", file=sys.stderr)
        rest.close()
        grpc.close()
        raw.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--reps", type=int, default=30, help="timed requests per path at n=1 (fewer at 256 px)")
    ap.add_argument("--json-pixels", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        for size in args.sizes:
            scale = max(1, (size // 64) ** 2 // 4)  # 256 px costs 16x per image: fewer repetitions
            reps = {1: max(5, args.reps // scale), 16: max(5, args.reps // (2 * scale))}
            rows += bench_size(size, reps, args.json_pixels, Path(tmp))
    print()
    print(f"{'size':>5} {'n':>3}  {'path':<22} {'p50 ms':>9} {'p99 ms':>9} {'img/s':>8} "
          f"{'vs in-process':>14}")
    for r in rows:
        print(f"{r['size']:>5} {r['n']:>3}  {r['path']:<22} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} "
              f"{r['images_per_s']:8.1f} {r['overhead_p50']:+13.1%}")
    n16 = [r for r in rows if r["n"] == 16 and r["path"] in ("REST", "gRPC")]
    worst = max((r["overhead_p50"] for r in n16), default=float("nan"))
    print(f"\nserver overhead at n=16 (p50, worst of REST/gRPC and sizes): {worst:+.1%} (target <= +10%)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
