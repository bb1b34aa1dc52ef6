"""Speed of one adversarial step: this project's step against a tutorial-style reference, same run.

    .venv/bin/python bench/train_step.py [--sizes 64 128] [--batch 16] [--backbone xception]

Both steps train the same models (built once per size, weights copied so both start equal) on
the same prepared phantom frames through the same tf.data pipeline, and do the same update:
D on real and generated frames, then G through D. The reference is written the way the
TensorFlow DCGAN tutorial writes its step — a `tf.function` per model update launched from
Python, D called separately on real and generated frames, Keras loss objects, `tf.random.normal`
latents. This project's step (medsynth.train.step.AdversarialStep) runs both updates in one
function on one generated batch: G's forward pass and a frozen backbone's pass over [real; fake]
serve both updates (G's update adds only backward passes), and it can be XLA-compiled (--xla on).
Its convolutions take their input gradient as a forward convolution
(medsynth.models.layers.use_forward_gradients); the reference runs Keras' own layers, as the
tutorial would (same weights, same numbers).
GFLOP/s count the FLOPs each step actually runs (medsynth.train.flops.step_flops), so ours does
fewer per image for the same update.

Timed blocks alternate (ours, reference, ours, …) so that load from other processes hits both;
the median block counts. FLOPs are counted analytically (medsynth.train.flops) and reported
as GFLOP/s and as a share of this CPU's fp32 peak, measured in the same run by bench/cpu_peak.py
(FMA chains on every core: 79 GFLOP/s on the 2 cores here, which retire one 256-bit FMA per
cycle), and of the nominal 157 GFLOP/s DESIGN §3 assumes (two per cycle). On a GPU pass its
dense bf16/fp16 peak with --peak-gflops for MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cpu_peak  # noqa: E402
import tensorflow as tf  # noqa: E402

from medsynth.models.layers import FORWARD_GRADIENT_LAYERS, fuse_batch_norm  # noqa: E402
from medsynth.train.augment import parse_policy  # noqa: E402
from medsynth.train.config import TrainConfig  # noqa: E402
from medsynth.train.flops import step_flops  # noqa: E402
from medsynth.train.loop import _gpu_capability, _optimizer, build_models, resolve_precision  # noqa: E402
from medsynth.train.step import AdversarialStep  # noqa: E402

NOMINAL_CPU_PEAK = 157.0  # DESIGN §3: 2 Zen-3 cores at two 256-bit FMAs per cycle; shown beside the measured


def reference_step(generator, discriminator, g_opt, d_opt, batch: int, latent_dim: int):  # noqa: ANN001, ANN201
    """The DCGAN tutorial's way, one update per model: eager loop, a tf.function per update."""
    cross_entropy = tf.keras.losses.BinaryCrossentropy(from_logits=True)

    @tf.function
    def d_train_step(images):  # noqa: ANN001, ANN202
        noise = tf.random.normal([batch, latent_dim])
        generated_images = generator(noise, training=True)
        with tf.GradientTape() as disc_tape:
            real_output = discriminator(images, training=True)
            fake_output = discriminator(generated_images, training=True)
            disc_loss = cross_entropy(tf.ones_like(real_output), real_output) + cross_entropy(
                tf.zeros_like(fake_output), fake_output
            )
        gradients = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        d_opt.apply_gradients(zip(gradients, discriminator.trainable_variables, strict=True))
        return disc_loss

    @tf.function
    def g_train_step():  # noqa: ANN202
        noise = tf.random.normal([batch, latent_dim])
        with tf.GradientTape() as gen_tape:
            generated_images = generator(noise, training=True)
            fake_output = discriminator(generated_images, training=True)
            gen_loss = cross_entropy(tf.ones_like(fake_output), fake_output)
        gradients = gen_tape.gradient(gen_loss, generator.trainable_variables)
        g_opt.apply_gradients(zip(gradients, generator.trainable_variables, strict=True))
        return gen_loss

    def train_step(images):  # noqa: ANN001, ANN202
        d = d_train_step(images)
        g = g_train_step()
        return {"d_loss": d, "g_loss": g}

    return train_step


def stock_convolutions(model: tf.keras.Model) -> None:
    """The reference runs Keras' own layers: undo medsynth.models.layers.use_forward_gradients."""
    stock = {fast: keras for keras, fast in FORWARD_GRADIENT_LAYERS.items()}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        layer.__class__ = stock.get(type(layer), type(layer))


def _dataset(size: int, batch: int, work: Path) -> tf.data.Dataset:
    from medsynth.data.input import make_dataset
    from medsynth.data.prepare import PrepareConfig, prepare

    data = prepare(PrepareConfig(source="builtin://phantom", out=str(work), image_size=size,
                                 phantom_frames=max(64, 2 * batch)))
    return make_dataset(data, "train", batch_size=batch, seed=0)


def _time(fn, iterator, steps: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    out = None
    for i in range(steps):
        out = fn(next(iterator), tf.constant(i, tf.int64))
    float(out["g_loss"])  # wait for the last step
    return time.perf_counter() - t0


def bench_size(args: argparse.Namespace, size: int, work: Path) -> dict:
    capability = _gpu_capability()
    policy = resolve_precision(args.mixed_precision, capability)
    xla = args.xla == "on"  # auto is off: XLA cannot compile the step in TF 2.15 (medsynth.train.loop)
    cfg = TrainConfig(data="-", out="-", image_size=size, batch_size=args.batch, backbone=args.backbone,
                      backbone_weights="none", backbone_mode=args.backbone_mode, latent_dim=100,
                      generator_width=args.width)
    tf.keras.utils.set_random_seed(0)
    models = {name: build_models(cfg, policy) for name in ("ours", "reference")}
    for a, b in zip(models["ours"], models["reference"], strict=True):
        b.set_weights(a.get_weights())
        stock_convolutions(b)
        for m in (a, b):  # one device: plain fused BN on both sides, as train() and the tutorial use
            fuse_batch_norm(m)
    opts = {name: (_optimizer(2e-4, 0.5, policy), _optimizer(2e-4, 0.5, policy)) for name in models}
    g, d = models["ours"]
    # ours is the training step as `medsynth train` runs it, D's augmentation (--d-augment) included
    ours = AdversarialStep(g, d, *opts["ours"], global_batch_size=args.batch, latent_dim=100, seed=0,
                           jit_compile=xla, augment=parse_policy(cfg.d_augment)).train_step
    ref_step = reference_step(*models["reference"], *opts["reference"], args.batch, 100)

    def reference(images, step):  # noqa: ANN001, ANN202
        return ref_step(images)

    iterator = iter(_dataset(size, args.batch, work))
    steps = {"ours": ours, "reference": reference}
    t0 = time.perf_counter()
    for fn in steps.values():  # trace and warm up
        _time(fn, iterator, args.warmup)
    warm_s = time.perf_counter() - t0
    blocks: dict[str, list[float]] = {k: [] for k in steps}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in steps.items():
            blocks[name].append(args.batch * args.steps / _time(fn, iterator, args.steps))
    load_after = os.getloadavg()[0]
    ips = {k: statistics.median(v) for k, v in blocks.items()}
    flops_ours = step_flops(*models["ours"], args.batch, fused=True)
    flops_ref = step_flops(*models["reference"], args.batch, fused=False)
    row = {
        "size": size,
        "batch": args.batch,
        "backbone": args.backbone,
        "backbone_frozen": bool(flops_ours["frozen_backbone"]),
        "precision": policy,
        "xla": xla,
        "ours_images_per_s": ips["ours"],
        "reference_images_per_s": ips["reference"],
        "ratio": ips["ours"] / ips["reference"],
        "blocks": blocks,
        "gflop_per_step_ours": flops_ours["step"] / 1e9,
        "gflop_per_step_reference": flops_ref["step"] / 1e9,
        "ours_gflops": flops_ours["step"] / 1e9 * ips["ours"] / args.batch,
        "reference_gflops": flops_ref["step"] / 1e9 * ips["reference"] / args.batch,
        "load_before": load_before,
        "load_after": load_after,
        "warmup_s": warm_s,
    }
    row["ours_share_of_peak"] = row["ours_gflops"] / args.peak_gflops
    row["reference_share_of_peak"] = row["reference_gflops"] / args.peak_gflops
    if capability is None:  # a CPU: DESIGN's nominal peak beside the measured one
        row["ours_share_of_nominal"] = row["ours_gflops"] / NOMINAL_CPU_PEAK
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbone", default="xception")
    p.add_argument("--backbone-mode", default="frozen", choices=["frozen", "trainable"])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--xla", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "off", "float16", "bfloat16"])
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="peak to divide by (default on a CPU: measured by bench/cpu_peak.py in this run; "
                        "on a GPU: required, its dense bf16/fp16 peak)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    if args.batch < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--batch, --steps and --rounds must be >= 1")
    gpus = tf.config.list_physical_devices("GPU")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else "CPU"
    if args.peak_gflops is None:
        if gpus:
            p.error("on a GPU pass --peak-gflops (its dense peak at the precision used)")
        args.peak_gflops = cpu_peak.measure()["gflops"]
    print(f"device: {device}; {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.2f}; "
          f"peak {args.peak_gflops:.1f} GFLOP/s ({'given' if gpus else 'measured FMA chains'})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        for size in args.sizes:
            row = bench_size(args, size, Path(work))
            rows.append(row)
            nominal = ""
            if "ours_share_of_nominal" in row:
                nominal = f" (ours {100 * row['ours_share_of_nominal']:.1f}% of nominal {NOMINAL_CPU_PEAK:g})"
            print(
                f"{size:>4} px batch {row['batch']} {row['backbone']} "
                f"({'frozen' if row['backbone_frozen'] else 'trainable'}), {row['precision']}, "
                f"XLA {'on' if row['xla'] else 'off'}: ours {row['ours_images_per_s']:.1f} img/s, "
                f"reference {row['reference_images_per_s']:.1f} img/s, ratio {row['ratio']:.2f}x | "
                f"ours {row['ours_gflops']:.1f} GFLOP/s = {100 * row['ours_share_of_peak']:.1f}% of "
                f"{args.peak_gflops:.1f}, reference {row['reference_gflops']:.1f} GFLOP/s = "
                f"{100 * row['reference_share_of_peak']:.1f}%{nominal} | {row['gflop_per_step_ours']:.1f} / "
                f"{row['gflop_per_step_reference']:.1f} GFLOP per step | load {row['load_before']:.2f} -> "
                f"{row['load_after']:.2f}",
                flush=True,
            )
    if args.json:
        out = {"device": device, "peak_gflops": args.peak_gflops, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
