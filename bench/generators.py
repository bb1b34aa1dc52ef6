"""Speed of the training step with Table 1's generator against FastGAN's, the same D, in one run.

    .venv/bin/python bench/generators.py [--size 64] [--batch 16] [--widths 8 16 32] [--tfa 16]

Each configuration is the step `medsynth train` runs (`build_train_state` on one device, the loop's
AdversarialStep, G's moving average updated after every step) with the demo's discriminator
(EfficientNet-Lite0 under Projected GAN's head, frozen; random weights, the same FLOPs as ImageNet's) on
random frames in [-1, 1]: what the frames show does not change the time. The paper G (width 8) is the
baseline; `--widths` are FastGAN's ngf. `--tfa W` adds FastGAN at ngf W with TF Addons'
SpectralNormalization wrapper in place of medsynth.models.layers.SpectralConv2D / SpectralDense (another
gradient: it writes kernel / σ into the variable, so none flows through σ). Timed blocks alternate over the
configurations (load from other processes hits all of them): img/s is the median block, the ratio the
median of each round's ratio to the paper G's block of that round.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorflow as tf  # noqa: E402

from medsynth.train.config import TrainConfig  # noqa: E402
from medsynth.train.flops import model_flops  # noqa: E402
from medsynth.train.loop import _adversarial_step  # noqa: E402
from medsynth.train.models import build_train_state  # noqa: E402
from medsynth.train.strategy import make_distribution  # noqa: E402


@contextlib.contextmanager
def tfa_spectral_norm() -> Iterator[None]:
    """FastGAN built with TF Addons' spectral-norm wrapper around plain Keras layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow_addons as tfa

    from medsynth.models import fastgan

    saved = fastgan.SpectralConv2D, fastgan.SpectralDense
    fastgan.SpectralConv2D = lambda *a, **k: tfa.layers.SpectralNormalization(tf.keras.layers.Conv2D(*a, **k))
    fastgan.SpectralDense = lambda *a, **k: tfa.layers.SpectralNormalization(tf.keras.layers.Dense(*a, **k))
    try:
        yield
    finally:
        fastgan.SpectralConv2D, fastgan.SpectralDense = saved


def build(args: argparse.Namespace, generator: str, width: int, tfa: bool = False) -> dict:
    cfg = TrainConfig(data="-", out="-", image_size=args.size, batch_size=args.batch, seed=0,
                      backbone="efficientnet_lite0", backbone_weights="none", backbone_mode="frozen",
                      d_head="projected", generator=generator, generator_width=width)
    tf.keras.utils.set_random_seed(0)
    dist = make_distribution("one")
    with tfa_spectral_norm() if tfa else contextlib.nullcontext():
        state = build_train_state(cfg, dist, "float32")
    step = _adversarial_step(cfg, dist, state, xla=False)

    def run(real: tf.Tensor, i: int) -> dict:
        out = step.train_step(real, tf.constant(i, tf.int64))
        state.average.update(i + 1)
        return out

    g_gflop = None if tfa else sum(r.flops for r in model_flops(state.generator)) / 1e9  # wrapped: uncounted
    return {"run": run, "g_params": state.generator.count_params(), "g_gflop": g_gflop}


def timed(run, real: tf.Tensor, start: int, steps: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    out = None
    for i in range(start, start + steps):
        out = run(real, i)
    float(out["g_loss"])  # wait for the last step
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--widths", type=int, nargs="+", default=[8, 16, 32], help="FastGAN's ngf values")
    p.add_argument("--tfa", type=int, nargs="*", default=[], help="ngf values built with TF Addons' SN")
    p.add_argument("--steps", type=int, default=4, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=5, help="timed blocks per configuration")
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    configs = {"paper w=8": build(args, "paper", 8)}
    configs.update({f"fastgan ngf={w}": build(args, "fastgan", w) for w in args.widths})
    configs.update({f"fastgan ngf={w} (tfa SN)": build(args, "fastgan", w, tfa=True) for w in args.tfa})
    real = tf.random.stateless_uniform([args.batch, args.size, args.size, 1], [0, 1], minval=-1.0, maxval=1.0)
    for c in configs.values():  # trace and warm up
        timed(c["run"], real, 0, args.warmup)
    blocks: dict[str, list[float]] = {name: [] for name in configs}
    load = os.getloadavg()[0]
    for r in range(args.rounds):
        for name, c in configs.items():
            start = args.warmup + r * args.steps
            blocks[name].append(args.batch * args.steps / timed(c["run"], real, start, args.steps))
    print(f"{args.size} px, batch {args.batch}, D: Lite0 + projected head (frozen); {os.cpu_count()} cores, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}; median of {args.rounds} blocks of {args.steps} "
          "steps")
    print("| G | parameters | G forward GFLOP / image | img/s | vs paper G (min–max over rounds) |")
    print("|---|---:|---:|---:|---:|")
    for name, c in configs.items():
        # each round's ratio to the paper G's block beside it: load that comes and goes hits both
        ratios = [a / b for a, b in zip(blocks[name], blocks["paper w=8"], strict=True)]
        gflop = "–" if c["g_gflop"] is None else f"{c['g_gflop']:.3f}"
        print(f"| {name} | {c['g_params']:,} | {gflop} | {statistics.median(blocks[name]):.1f} | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
