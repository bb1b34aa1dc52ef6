"""Input pipeline images/s at 256 px against what one training step consumes, measured in the same run.

Target (issue 7): the pipeline delivers at least 10x the training step's rate and at least 2,000
images/s at 256 px on a 2-core machine. The step is the paper's GAN update (generator of Table 1,
discriminator with a backbone, BCE, two Adam optimizers) with backbone weights `none`.

    .venv/bin/python bench/input_pipeline.py [--frames 2048] [--batch 16] [--backbone mobilenet]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def images_per_second(ds, batch: int, seconds: float) -> float:
    it = iter(ds)
    for _ in range(5):  # warm-up: tracing, autotune, first fill
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(it)
        n += 1
    return n * batch / (time.perf_counter() - t0)


def step_rate(image_size: int, batch: int, backbone: str, steps: int) -> float:
    """Images/s consumed by plain BCE GAN steps (D then G) on random real batches."""
    import tensorflow as tf

    from medsynth.models.discriminator import build_discriminator
    from medsynth.models.generator import build_generator

    g = build_generator(image_size)
    d = build_discriminator(image_size, backbone=backbone, weights="none")
    bce = tf.keras.losses.BinaryCrossentropy(from_logits=True)
    g_opt, d_opt = tf.keras.optimizers.Adam(2e-4, 0.5), tf.keras.optimizers.Adam(2e-4, 0.5)
    latent = g.input_shape[-1]

    @tf.function
    def step(real):
        z = tf.random.normal([batch, latent])
        with tf.GradientTape() as tape:
            fake = g(z, training=True)
            lr, lf = d(real, training=True), d(fake, training=True)
            d_loss = bce(tf.ones_like(lr), lr) + bce(tf.zeros_like(lf), lf)
        d_opt.apply_gradients(
            zip(tape.gradient(d_loss, d.trainable_variables), d.trainable_variables, strict=True)
        )
        with tf.GradientTape() as tape:
            lf = d(g(z, training=True), training=True)
            g_loss = bce(tf.ones_like(lf), lf)
        g_opt.apply_gradients(
            zip(tape.gradient(g_loss, g.trainable_variables), g.trainable_variables, strict=True)
        )
        return d_loss, g_loss

    real = tf.random.uniform([batch, image_size, image_size, 1], -1, 1)
    step(real)  # trace
    t0 = time.perf_counter()
    for _ in range(steps):
        out = step(real)
    float(out[0])
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--frames", type=int, default=2048, help="phantom frames to prepare")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per pipeline variant")
    p.add_argument("--backbone", default="mobilenet")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "medsynth-bench-input"))
    args = p.parse_args()

    from medsynth.data.input import Augment, make_dataset, resolve_dataset

    everything = Augment(
        flip_lr=0.5, flip_ud=0.5, rotate_deg=5.0, brightness=0.05, contrast=0.1, noise_std=0.02
    )

    ds_dir = resolve_dataset("builtin://phantom", args.image_size, args.workdir, phantom_frames=args.frames)
    rows = []
    for name, kw in [
        ("in memory", {}),
        ("in memory + augment", {"augment": True}),
        ("in memory + augment all", {"augment": everything}),
        ("streaming", {"cache": False}),
        ("streaming + augment", {"cache": False, "augment": True}),
    ]:
        ds = make_dataset(ds_dir, "train", batch_size=args.batch, seed=0, **kw)
        rows.append((name, images_per_second(ds, args.batch, args.seconds)))
    consume = step_rate(args.image_size, args.batch, args.backbone, args.steps)

    print(
        f"input pipeline at {args.image_size} px, batch {args.batch}, {os.cpu_count()} cores "
        f"({args.frames} phantom frames)"
    )
    print(
        f"training step consumes: {consume:.2f} images/s (generator + {args.backbone} discriminator, "
        f"weights none, BCE, D and G updates)"
    )
    for name, rate in rows:
        print(
            f"  {name:<24} {rate:>9.0f} images/s   x{rate / consume:>8.0f} the step rate   "
            f"{'meets' if rate >= 2000 and rate >= 10 * consume else 'MISSES'} the target (>=2000, >=10x)"
        )


if __name__ == "__main__":
    main()
