"""The CPU peak the benchmark divides by is work the kernel really does (bench/cpu_peak.py)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import cpu_peak  # noqa: E402

pytestmark = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc")), reason="needs a C compiler")


def test_kernel_does_the_flops_it_counts(tmp_path: Path) -> None:
    exe = cpu_peak.build(tmp_path)
    updates = 5000
    out = cpu_peak.run(exe, threads=1, updates=updates)
    assert out["lanes"] in (4, 8, 16)
    assert out["flops"] == 2 * updates * cpu_peak.CHAINS * out["lanes"]
    # every chain c (thread 0 starts them at 0 + c) did all its updates: the checksum is the sum of
    # a_c after `updates` steps of a = a * x + y, in every lane
    a = np.arange(cpu_peak.CHAINS, dtype=np.float64)
    for _ in range(updates):
        a = a * 0.999999 + 1e-7
    assert out["check"] == pytest.approx(out["lanes"] * a.sum(), rel=1e-4)
    # and a different number of updates gives a different sum: the loop is not folded away
    assert cpu_peak.run(exe, threads=1, updates=updates * 4)["check"] != pytest.approx(out["check"], rel=1e-4)


@pytest.mark.skipif(not cpu_peak.has_avx512_bf16(), reason="needs a CPU with AVX512_BF16")
def test_bf16_kernel_does_the_flops_it_counts(tmp_path: Path) -> None:
    exe = cpu_peak.build(tmp_path, "bf16")
    updates = 5000
    out = cpu_peak.run(exe, threads=1, updates=updates)
    assert out["flops"] == 4 * updates * cpu_peak.CHAINS * out["lanes"]
    # each update adds two products of 2^-10 * 2^-10 to every lane of every chain, exactly in fp32
    expected = out["lanes"] * (np.arange(cpu_peak.CHAINS) + updates * 2 * 2.0**-20).sum()
    assert out["check"] == pytest.approx(expected, rel=1e-6)
    assert cpu_peak.run(exe, threads=1, updates=updates * 4)["check"] != pytest.approx(out["check"], rel=1e-6)
