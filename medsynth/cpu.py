"""What this CPU is, and the one speed choice that must be made before TensorFlow is imported: oneDNN.

TensorFlow 2.15's Linux x86 package runs oneDNN's kernels by default only on CPUs with
neural-network instructions (AVX512_VNNI, AVX512_BF16, AVX_VNNI, AMX); elsewhere it runs Eigen's.
Eigen's batch norm and convolution backward kernels are the slow ones on AVX2: on a Zen 3 (AVX2, no
AVX-512) the demo's step ran 1.12x faster with oneDNN on (and forward-convolution input gradients off,
which only help Eigen), the tutorial-style reference 1.3x (docs/performance.md). TensorFlow reads
`TF_ENABLE_ONEDNN_OPTS` once, when it loads, so the entry points (the CLI, the pipeline's steps, the
benchmarks) call `choose_onednn` before they import it. A value the user set is always kept.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import MutableMapping

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# TensorFlow's own default (tensorflow/core/util/port.cc, DefaultOneDnnPolicy on Linux x86): any of these
ONEDNN_DEFAULT_FLAGS = frozenset(
    {"avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"}
)


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux; elsewhere none), read once."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """This CPU's feature flags (Linux: /proc/cpuinfo; elsewhere none)."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """This CPU's vendor id (GenuineIntel, AuthenticAMD, ...; Linux: /proc/cpuinfo)."""
    return _cpuinfo().get("vendor_id", "")


def cpu_name() -> str:
    """The model name with family and model, which tell EPYC generations apart ("" off Linux)."""
    info = _cpuinfo()
    if "model name" not in info:
        return ""
    return f"{info['model name']}, family {info.get('cpu family', '?')} model {info.get('model', '?')}"


def onednn_wanted(flags: set[str]) -> bool:
    """Whether medsynth turns oneDNN on where TensorFlow would leave it off: on x86 CPUs with AVX2
    (measured there); never needed where TensorFlow turns it on itself."""
    return "avx2" in flags and not flags & ONEDNN_DEFAULT_FLAGS


def choose_onednn(environ: MutableMapping[str, str] | None = None, flags: set[str] | None = None) -> str:
    """Set `TF_ENABLE_ONEDNN_OPTS=1` in `environ` (the process's, which child processes inherit) where
    `onednn_wanted`, unless it is set already or TensorFlow is loaded; returns why, for the log."""
    environ = os.environ if environ is None else environ
    if ONEDNN_ENV in environ:
        return f"oneDNN: {ONEDNN_ENV}={environ[ONEDNN_ENV]} as set in the environment"
    if "tensorflow" in sys.modules and environ is os.environ:
        return "oneDNN: TensorFlow's default (TensorFlow was loaded before the choice)"
    flags = cpu_flags() if flags is None else flags
    if onednn_wanted(flags):
        environ[ONEDNN_ENV] = "1"
        return f"oneDNN: on ({ONEDNN_ENV}=1; AVX2 without VNNI/BF16/AMX, where TensorFlow leaves it off)"
    return "oneDNN: TensorFlow's default for this CPU"


def onednn_enabled() -> bool:
    """Whether the loaded TensorFlow runs oneDNN's CPU kernels (its own answer)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())
