"""This CPU's fp32 peak, measured: independent FMA chains on every core, no memory traffic.

    .venv/bin/python bench/cpu_peak.py [--threads N]

A share of peak is only as honest as its denominator. A peak read off a model name assumes the
core runs two full-width FMAs per cycle; a virtual machine's cores may not (these report
"AMD EPYC", family 23, and retire one 256-bit FMA per cycle). So the benchmarks divide by what
the cores do: a C kernel (compiled here with the system's `cc -O2 -march=native`) keeps 12
independent vector accumulators per thread in registers, each updated by `a = a * x + y`, one
thread per core, and counts 2 FLOPs per lane per update. Twelve chains hide the FMA latency of
current x86 and Arm cores (4-5 cycles, up to two pipes); the accumulators start distinct, so the
compiler cannot merge them (it did, and reported 2.4-2.8x the real figure, when they started equal).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHAINS = 12
MAX_THREADS = 256  # the kernel's per-thread arrays
KERNEL = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#if defined(__AVX512F__)
#define WIDTH 16
#elif defined(__AVX__)
#define WIDTH 8
#else
#define WIDTH 4
#endif
typedef float vec __attribute__((vector_size(WIDTH * 4)));
static long updates;
static void *chains(void *arg) {
  float *out = arg, s = out[0];
  vec x = {0}, y = {0}, a[CHAINS];
  x += 0.999999f; y += 1e-7f;
  for (int c = 0; c < CHAINS; c++) { a[c] = (vec){0}; a[c] += s + c; }
  for (long i = 0; i < updates; i++) {
#pragma GCC unroll 16
    for (int c = 0; c < CHAINS; c++) a[c] = a[c] * x + y;
  }
  float sum = 0;
  for (int c = 0; c < CHAINS; c++) for (int l = 0; l < WIDTH; l++) sum += a[c][l];
  out[0] = sum;
  return NULL;
}
int main(int argc, char **argv) {
  int threads = atoi(argv[1]);
  updates = atol(argv[2]);
  pthread_t t[MAX_THREADS];
  float out[MAX_THREADS][16] = {{0}};
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < threads; i++) { out[i][0] = i; pthread_create(&t[i], 0, chains, out[i]); }
  for (int i = 0; i < threads; i++) pthread_join(t[i], 0);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  double flops = 2.0 * threads * updates * CHAINS * WIDTH;
  printf("%d %.6f %.0f %g\n", WIDTH, s, flops, out[0][0]);
  return 0;
}
"""


# The bfloat16 peak of CPUs with AVX512_BF16: chains of VDPBF16PS, each lane adding two bf16 products
# to its fp32 accumulator (4 FLOPs per lane and instruction: how oneDNN's bf16 convolutions and
# matrix products run without AMX). Same driver and output as KERNEL; `lanes` counts bf16 pairs.
BF16_KERNEL = KERNEL.replace(
    "#if defined(__AVX512F__)", "#include <immintrin.h>\n#if defined(__AVX512F__)"
).replace(
    """  vec x = {0}, y = {0}, a[CHAINS];
  x += 0.999999f; y += 1e-7f;
  for (int c = 0; c < CHAINS; c++) { a[c] = (vec){0}; a[c] += s + c; }
  for (long i = 0; i < updates; i++) {
#pragma GCC unroll 16
    for (int c = 0; c < CHAINS; c++) a[c] = a[c] * x + y;
  }""",
    """  __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0x1p-10f), _mm512_set1_ps(0x1p-10f));
  __m512 b[CHAINS];
  vec a[CHAINS];
  for (int c = 0; c < CHAINS; c++) b[c] = _mm512_set1_ps(s + c);
  for (long i = 0; i < updates; i++) {
#pragma GCC unroll 16
    for (int c = 0; c < CHAINS; c++) b[c] = _mm512_dpbf16_ps(b[c], x, x);
  }
  for (int c = 0; c < CHAINS; c++) a[c] = (vec)b[c];""",
).replace("2.0 * threads * updates", "4.0 * threads * updates")
KERNELS = {"fp32": KERNEL, "bf16": BF16_KERNEL}


def has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512_BF16 (Linux: /proc/cpuinfo's flags)."""
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def build(work: Path, kind: str = "fp32") -> Path:
    """Compile the kernel for this machine; FMA contraction on, nothing else fancy."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc/gcc) to measure the CPU peak; pass --peak-gflops instead")
    src, exe = work / f"peak_{kind}.c", work / f"peak_{kind}"
    src.write_text(KERNELS[kind].replace("MAX_THREADS", str(MAX_THREADS)).replace("CHAINS", str(CHAINS)))
    flags = ["-O2", "-march=native", "-ffp-contract=fast", "-pthread"]
    done = subprocess.run([cc, *flags, str(src), "-o", str(exe)], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{cc} could not build the CPU-peak kernel: {done.stderr.strip()[-500:]}")
    return exe


def run(exe: Path, threads: int, updates: int) -> dict:
    """One run of the built kernel: its vector width, seconds, FLOPs done and thread 0's checksum."""
    width, seconds, flops, check = subprocess.run(
        [str(exe), str(threads), str(updates)], check=True, capture_output=True, text=True
    ).stdout.split()
    return {"lanes": int(width), "seconds": float(seconds), "flops": float(flops), "check": float(check)}


def measure(
    threads: int | None = None, updates: int = 100_000_000, repeats: int = 3, kind: str = "fp32"
) -> dict:
    """Best of `repeats` runs of the `kind` kernel (fp32, or bf16 on AVX512_BF16) on `threads` threads
    (default: every core)."""
    threads = (os.cpu_count() or 1) if threads is None else threads
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"--threads must be between 1 and {MAX_THREADS}, got {threads}")
    with tempfile.TemporaryDirectory(prefix="cpu-peak-") as work:
        exe = build(Path(work), kind)
        runs = [run(exe, threads, updates) for _ in range(repeats)]
    best = max(r["flops"] / r["seconds"] for r in runs) / 1e9
    return {"threads": threads, "vector_lanes": runs[0]["lanes"], "chains": CHAINS, "gflops": best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="default: every core")
    args = p.parse_args()
    try:
        every = measure(args.threads)
    except ValueError as e:
        p.error(str(e))
    one = measure(1)
    print(f"fp32 FMA peak: {one['gflops']:.1f} GFLOP/s on 1 thread, {every['gflops']:.1f} GFLOP/s on "
          f"{every['threads']} ({every['vector_lanes']} lanes, {CHAINS} chains per thread)")
    if has_avx512_bf16():
        bf16 = measure(args.threads, kind="bf16")
        print(f"bf16 dot-product peak (AVX512_BF16): {bf16['gflops']:.1f} GFLOP/s on {bf16['threads']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
