"""Device policy: the precision, op determinism and XLA a run uses on the hardware it finds.

`auto` picks per kind of device (a CPU, or a GPU's compute capability); an explicit choice wins.
`train` resolves them once, before anything else runs, and writes what it chose into the run's
settings, so two runs on different machines say why their numbers differ.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.train.strategy import Distribution

log = logging.getLogger("medsynth")


def _gpu_capability() -> tuple[int, int] | None:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return tuple(details.get("compute_capability") or (0, 0))  # type: ignore[return-value]


def resolve_precision(choice: str, capability: tuple[int, int] | None) -> str:
    """The Keras policy: bfloat16 where tensor cores do it (Ampere, sm_80+), float16 on Volta/Turing."""
    if choice == "off":
        return "float32"
    if choice in ("float16", "bfloat16"):
        if capability is None:
            log.warning("--mixed-precision %s on a CPU: correct, but slower than float32", choice)
        return f"mixed_{choice}"
    if capability is None or capability < (7, 0):
        return "float32"
    return "mixed_bfloat16" if capability >= (8, 0) else "mixed_float16"


def resolve_determinism(choice: str, capability: tuple[int, int] | None) -> bool:
    """Op determinism: bitwise-exact resume on CPUs; off on GPUs, where it would keep XLA off.

    XLA has no deterministic MaxPool gradient (ResNet, Inception, Xception), and cuDNN's
    deterministic kernels are the slower ones: a GPU run trades bitwise resume (it still resumes
    at the saved step, with the saved data and RNG state) for speed, unless `--deterministic on`.
    """
    if choice == "auto":
        return capability is None
    return choice == "on"


def resolve_xla(
    choice: str, capability: tuple[int, int] | None, dist: Distribution, deterministic: bool = False
) -> bool:
    """Whether the step compiles with XLA: on GPUs by default, never under Horovod."""
    if dist.hvd is not None:
        if choice == "on":
            raise ConfigError(
                "--xla on with --strategy horovod: Horovod's all-reduce ops run outside XLA; "
                "use --xla off, or --strategy mirrored/multiworker for XLA"
            )
        return False
    if choice == "auto":
        # On for GPUs, where fusing the many small normalisation and activation ops is what XLA
        # is for; off on CPUs, where TF's own kernels are oneDNN's and XLA's are not (bench/).
        # The whole step compiles (CPU-checked in tests) since G's up-sampling is a broadcast
        # (medsynth.models.layers.NearestUpSampling2D), not ResizeNearestNeighbor.
        # With op determinism XLA refuses MaxPool's gradient (ResNet, Xception, Inception): off.
        return capability is not None and not deterministic
    return choice == "on"
