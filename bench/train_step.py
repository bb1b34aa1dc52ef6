"""Speed of one adversarial step: this project's step against a tutorial-style reference, same run.

    .venv/bin/python bench/train_step.py --demo [--set d_feature_size=128 ...] [--profile ours]
    .venv/bin/python bench/train_step.py [--sizes 64 128] [--batch 16] [--backbone xception]

`--demo` measures the configuration `make demo` trains last: the TrainConfig of its final training
(medsynth.demo.final_train_config: the pipeline's defaults, the demo's arguments, the pipeline's
mapping to the final task) for the candidate that wins its comparison (`--backbone`, default the
demo's last candidate, pg-fastgan-sep-lite0: FastGAN's G, Projected GAN's recipe and separable
per-scale discriminators on frozen Lite0 at 64 px, batch 16, DiffAugment). `--set
NAME=VALUE` changes any TrainConfig field first (the quality work's feature size or generator).
Without `--demo` a config is made from the flags (`--sizes`, `--backbone`, random weights).

"ours" is what `medsynth train` runs, built by the same functions (device policy, TrainState with
its per-CPU fast path, the step, G's moving average after each step). The reference trains the same
models (same weights) the way the TensorFlow GAN tutorials write it: Keras' layers as built (no
folding, Keras' own convolution gradients), fp32, one `tf.function` per model update launched
from Python, D called on the real and on the generated frames, G run again for its own update —
with the same losses and DiffAugment as ours (so both do the same update) and G's moving average.

The first call of each is timed apart (tracing and compilation). Timed blocks then alternate
(ours, reference, ours, ...) so that load from other processes hits both; medians and the spread
(min-max) of each, and the ratio of each pair of neighbouring blocks, are printed. GFLOP/s count the
FLOPs each step runs (medsynth.train.flops.step_flops), as a share of this CPU's peak measured in the
same run (bench/cpu_peak.py: fp32 FMA chains, and on AVX512_BF16 CPUs the bf16 dot-product peak).
`--toggle FIELD` times ours with that FastPath choice flipped as well (what each trick is worth here).
`--profile ours|reference` prints the per-op table of TF's profiler for that step (bench/op_profile.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from medsynth.cpu import choose_onednn, cpu_name  # noqa: E402

ONEDNN = choose_onednn()  # before TensorFlow loads, as `medsynth train` does (TF_ENABLE_ONEDNN_OPTS=0: off)

import cpu_peak  # noqa: E402
import tensorflow as tf  # noqa: E402

from medsynth.errors import ConfigError  # noqa: E402
from medsynth.models.layers import fuse_batch_norm, use_stock_gradients  # noqa: E402
from medsynth.train.augment import UNIFORMS, diff_augment, parse_policy  # noqa: E402
from medsynth.train.config import TrainConfig  # noqa: E402
from medsynth.train.devices import (  # noqa: E402
    _gpu_capability,
    resolve_determinism,
    resolve_precision,
    resolve_xla,
)
from medsynth.train.fastpath import FastPath  # noqa: E402
from medsynth.train.fastpath import choose as choose_fast_path  # noqa: E402
from medsynth.train.flops import step_flops  # noqa: E402
from medsynth.train.loop import adversarial_step  # noqa: E402
from medsynth.train.loss import discriminator_loss, generator_loss  # noqa: E402
from medsynth.train.models import _average, _optimizer, build_models, build_train_state  # noqa: E402
from medsynth.train.strategy import make_distribution  # noqa: E402

FAST_PATH_FIELDS = [f.name for f in dataclasses.fields(FastPath) if f.type in ("bool", bool)]


def reference_step(generator, discriminator, g_opt, d_opt, cfg: TrainConfig):  # noqa: ANN001, ANN201
    """The tutorials' way, one update per model: a tf.function per update, launched from Python."""
    batch, policy = cfg.batch_size, parse_policy(cfg.d_augment)

    def augment(frames):  # noqa: ANN001, ANN202 - DiffAugment, as in ours
        return diff_augment(frames, tf.random.uniform([batch, UNIFORMS if policy else 0]), policy, cfg.cutout)

    @tf.function
    def d_train_step(images):  # noqa: ANN001, ANN202
        noise = tf.random.normal([batch, cfg.latent_dim])
        generated_images = generator(noise, training=True)
        with tf.GradientTape() as disc_tape:
            real_output = discriminator(augment(images), training=True)
            fake_output = discriminator(augment(generated_images), training=True)
            disc_loss = discriminator_loss(real_output, fake_output, batch, cfg.label_smoothing, cfg.loss)
        gradients = disc_tape.gradient(disc_loss, discriminator.trainable_variables)
        d_opt.apply_gradients(zip(gradients, discriminator.trainable_variables, strict=True))
        return disc_loss

    @tf.function
    def g_train_step():  # noqa: ANN202
        noise = tf.random.normal([batch, cfg.latent_dim])
        with tf.GradientTape() as gen_tape:
            generated_images = generator(noise, training=True)
            fake_output = discriminator(augment(generated_images), training=True)
            gen_loss = generator_loss(fake_output, batch, cfg.loss)
        gradients = gen_tape.gradient(gen_loss, generator.trainable_variables)
        g_opt.apply_gradients(zip(gradients, generator.trainable_variables, strict=True))
        return gen_loss

    def train_step(images):  # noqa: ANN001, ANN202
        return {"d_loss": d_train_step(images), "g_loss": g_train_step()}

    return train_step


def _best_seconds(fn: tf.types.experimental.GenericFunction, x: tf.Tensor, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x).numpy()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_bfloat16(repeats: int = 7) -> float:
    """How many times faster a convolution's forward and backward passes run in bfloat16 than in
    float32 here: a 3x3 convolution of a [32, 16, 16, 64] batch to 128 channels, as in D's head,
    best of `repeats` calls of each, alternating."""
    x = tf.random.stateless_normal([32, 16, 16, 64], seed=[0, 1])
    kernel = tf.random.stateless_normal([3, 3, 64, 128], seed=[0, 2]) * 0.05

    def step(dtype: tf.DType) -> tf.types.experimental.GenericFunction:
        @tf.function
        def run(x: tf.Tensor) -> tf.Tensor:
            k = tf.cast(kernel, dtype)
            with tf.GradientTape() as tape:
                tape.watch(k)
                xc = tf.cast(x, dtype)
                tape.watch(xc)
                y = tf.nn.conv2d(xc, k, 1, "SAME")
            dx, dk = tape.gradient(y, [xc, k], output_gradients=tf.ones_like(y))
            return tf.reduce_sum(tf.cast(dx, tf.float32)) + tf.reduce_sum(tf.cast(dk, tf.float32))

        return run

    fp32, bf16 = step(tf.float32), step(tf.bfloat16)
    fp32(x).numpy(), bf16(x).numpy()  # traced, warmed
    t32 = t16 = float("inf")
    for _ in range(repeats):
        t32 = min(t32, _best_seconds(fp32, x, 1))
        t16 = min(t16, _best_seconds(bf16, x, 1))
    return t32 / t16


def demo_config(args: argparse.Namespace, data: str) -> TrainConfig:
    from medsynth.demo import DemoConfig, final_train_config

    return final_train_config(DemoConfig(), data, args.backbone, args.overrides)


def flags_config(args: argparse.Namespace, size: int, data: str) -> TrainConfig:
    values = dict(data=data, out="-", image_size=size, batch_size=args.batch,
                  backbone=args.backbone or "xception", backbone_weights="none",
                  backbone_mode=args.backbone_mode, generator_width=args.width)
    return TrainConfig(**{**values, **args.overrides})


def _prepare(size: int, batch: int, work: Path) -> Path:
    from medsynth.data.prepare import PrepareConfig, prepare

    return Path(prepare(PrepareConfig(source="builtin://phantom", out=str(work / f"data{size}"),
                                      image_size=size, phantom_frames=max(64, 2 * batch))))


class Contender:
    """One step to time: `call()` runs the next step on the next batch; `first_s` is its first call."""

    def __init__(self, run, iterator, batch: int) -> None:  # noqa: ANN001
        self.run, self.iterator, self.batch = run, iterator, batch
        self.first_s, self.i = 0.0, 0

    def call(self) -> dict:
        out = self.run(next(self.iterator), self.i)
        self.i += 1
        return out

    def block(self, steps: int) -> float:
        """Images per second over `steps` steps (waiting for the last one's result)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            out = self.call()
        float(out["g_loss"])
        return steps * self.batch / (time.perf_counter() - t0)


def _ours(cfg: TrainConfig, dist, policy: str, xla: bool, fast: FastPath, data: Path):  # noqa: ANN001, ANN202
    """One step of medsynth.train.loop's step loop, as `medsynth train` builds it with `fast`."""
    from medsynth.train.feed import Feed

    tf.keras.utils.set_random_seed(cfg.seed)
    state = build_train_state(cfg, dist, policy, fast)
    step = adversarial_step(cfg, dist, state, xla, fast)

    def run(real, i):  # noqa: ANN001, ANN202
        out = step.train_step(real, tf.constant(i, tf.int64))
        state.step.assign(i + 1)
        if state.average:
            state.average.update(i + 1)
        return out

    return Contender(run, Feed(dist, data, cfg), cfg.batch_size), state


def build(cfg: TrainConfig, data: Path, toggles: list[str]) -> tuple[dict[str, Contender], dict]:
    """Ours (as `medsynth train` builds it), ours with each of `toggles` (FastPath fields) flipped, and
    the reference: same weights, same data."""
    from medsynth.train.feed import Feed

    capability = _gpu_capability()
    deterministic = resolve_determinism(cfg.deterministic, capability)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    dist = make_distribution(cfg.strategy, cfg.gpus)
    policy = resolve_precision(cfg.mixed_precision, capability)
    xla = resolve_xla(cfg.xla, capability, dist, deterministic)
    fast = choose_fast_path(cfg.mixed_precision, capability, frozen_features=cfg.backbone_mode == "frozen")
    contenders: dict[str, Contender] = {}
    contenders["ours"], state = _ours(cfg, dist, policy, xla, fast, data)
    for name in toggles:
        flipped = dataclasses.replace(fast, **{name: not getattr(fast, name)})
        label = f"ours, {name} {'on' if getattr(flipped, name) else 'off'}"
        contenders[label] = _ours(cfg, dist, policy, xla, flipped, data)[0]
    g_ref, d_ref = build_models(cfg, "float32")
    for ours_model, ref_model in ((state.generator, g_ref), (state.discriminator, d_ref)):
        ref_model.set_weights([tf.cast(w, tf.float32).numpy() for w in ours_model.weights])
        use_stock_gradients(ref_model)  # Keras' own layers, as the tutorials build them
        fuse_batch_norm(ref_model)  # Keras' default BN (fused kernels)
    opts = (_optimizer(cfg.lr_g, cfg.beta_1, "float32", cfg.beta_2, cfg.adam_epsilon),
            _optimizer(cfg.lr_d, cfg.beta_1, "float32", cfg.beta_2, cfg.adam_epsilon))
    ref_step = reference_step(g_ref, d_ref, *opts, cfg)
    ref_average = _average(cfg, g_ref)

    def reference(real, i):  # noqa: ANN001, ANN202
        out = ref_step(real)
        if ref_average:
            ref_average.update(i + 1)
        return out

    contenders["reference"] = Contender(reference, Feed(dist, data, cfg), cfg.batch_size)
    flops = {"ours": step_flops(state.generator, state.discriminator, cfg.batch_size, fused=True),
             "reference": step_flops(g_ref, d_ref, cfg.batch_size, fused=False)}
    info = {"precision": policy, "xla": xla, "deterministic": deterministic, "flops": flops,
            "fast_path": fast.describe()}
    return contenders, info


def bench(args: argparse.Namespace, cfg: TrainConfig, data: Path, peaks: dict[str, float]) -> dict:
    contenders, info = build(cfg, data, args.toggle)
    for c in contenders.values():  # first call: tracing and compilation, timed apart
        t0 = time.perf_counter()
        float(c.call()["g_loss"])
        c.first_s = time.perf_counter() - t0
        for _ in range(args.warmup):
            c.call()
    blocks: dict[str, list[float]] = {k: [] for k in contenders}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, c in contenders.items():
            blocks[name].append(c.block(args.steps))
    load_after = os.getloadavg()[0]
    ips = {k: statistics.median(v) for k, v in blocks.items()}
    pairs = [o / r for o, r in zip(blocks["ours"], blocks["reference"], strict=True)]
    row = {
        "size": cfg.image_size, "batch": cfg.batch_size, "backbone": cfg.backbone, "d_head": cfg.d_head,
        "generator": f"{cfg.generator} G, width {cfg.generator_width}", "d_recipe": cfg.d_recipe,
        "d_feature_size": cfg.d_feature_size, "precision": info["precision"], "xla": info["xla"],
        "deterministic": info["deterministic"], "fast_path": info["fast_path"],
        "ours_images_per_s": ips["ours"], "reference_images_per_s": ips["reference"],
        "ratio": statistics.median(pairs), "ratio_min": min(pairs), "ratio_max": max(pairs),
        "blocks": blocks, "first_step_s": {k: c.first_s for k, c in contenders.items()},
        "load_before": load_before, "load_after": load_after,
    }
    row["toggles"] = {}
    for name in contenders:
        if name.startswith("ours, "):  # ours over it, block by block
            ratios = [o / t for o, t in zip(blocks["ours"], blocks[name], strict=True)]
            row["toggles"][name] = {"images_per_s": ips[name], "ours_over_it": statistics.median(ratios),
                                    "min": min(ratios), "max": max(ratios)}
    for name in ("ours", "reference"):
        gflop = info["flops"][name]["step"] / 1e9
        row[f"gflop_per_step_{name}"] = gflop
        row[f"{name}_gflops"] = gflop * ips[name] / cfg.batch_size
        for kind, peak in peaks.items():
            row[f"{name}_share_of_{kind}_peak"] = row[f"{name}_gflops"] / peak
    if args.profile:
        from op_profile import op_table, profile_ops

        c = contenders[args.profile]
        rows, wall = profile_ops(c.call, calls=args.steps, by=args.profile_by)
        row["profile"] = op_table(rows, wall, top=args.profile_top, calls=args.steps)
    return row


def _print(row: dict, peaks: dict[str, float]) -> None:
    blocks = row["blocks"]
    spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in blocks.items()}
    shares = ", ".join(
        f"{kind} peak {peak:.0f}: ours {100 * row[f'ours_share_of_{kind}_peak']:.1f} %, reference "
        f"{100 * row[f'reference_share_of_{kind}_peak']:.1f} %" for kind, peak in peaks.items())
    print(
        f"{row['size']} px, batch {row['batch']}, {row['generator']}, {row['backbone']} ({row['d_head']} "
        f"head, {row['d_recipe']} recipe, features at {row['d_feature_size'] or row['size']} px), "
        f"{row['precision']}, "
        f"XLA {'on' if row['xla'] else 'off'}, "
        f"determinism {'on' if row['deterministic'] else 'off'}\n  {row['fast_path']}\n"
        f"  ours      {row['ours_images_per_s']:.1f} img/s (blocks {spread['ours']}), first step "
        f"{row['first_step_s']['ours']:.1f} s, {row['ours_gflops']:.1f} GFLOP/s\n"
        f"  reference {row['reference_images_per_s']:.1f} img/s (blocks {spread['reference']}), first step "
        f"{row['first_step_s']['reference']:.1f} s, {row['reference_gflops']:.1f} GFLOP/s\n"
        f"  ratio {row['ratio']:.2f} (pairs {row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | {shares} | "
        f"{row['gflop_per_step_ours']:.2f} / {row['gflop_per_step_reference']:.2f} GFLOP per step | load "
        f"{row['load_before']:.2f} -> {row['load_after']:.2f}",
        flush=True,
    )
    for name, t in row["toggles"].items():
        print(f"  {name}: {t['images_per_s']:.1f} img/s; ours is {t['ours_over_it']:.2f}x it (blocks "
              f"{t['min']:.2f}-{t['max']:.2f})", flush=True)
    if row.get("profile"):
        print(row["profile"], flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", action="store_true", help="the demo's final training (its TrainConfig)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="a TrainConfig field to change (repeatable), e.g. d_feature_size=128")
    p.add_argument("--backbone", default=None, help="--demo: the comparison's winner (default: the demo's "
                                                     "last candidate, pg-fastgan-sep-lite0); "
                                                     "else the backbone (xception)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="without --demo")
    p.add_argument("--batch", type=int, default=16, help="without --demo")
    p.add_argument("--backbone-mode", default="frozen", choices=["frozen", "trainable"],
                   help="without --demo")
    p.add_argument("--width", type=int, default=8, help="without --demo")
    p.add_argument("--steps", type=int, default=5, help="steps per timed block")
    p.add_argument("--rounds", type=int, default=3, help="timed blocks per step, interleaved")
    p.add_argument("--warmup", type=int, default=2, help="steps after the first, untimed")
    p.add_argument("--toggle", action="append", default=[], choices=FAST_PATH_FIELDS,
                   help="also time ours with this fast-path choice flipped (repeatable), interleaved")
    p.add_argument("--profile", choices=["ours", "reference"], default=None,
                   help="print TF's per-op profile of that step (after the timed blocks)")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--profile-by", choices=["kernel", "name", "scope"], default="kernel",
                   help="rows per kernel (op type), per node, or per model part")
    p.add_argument("--peak-gflops", type=float, default=None,
                   help="peak to divide by (default on a CPU: measured by bench/cpu_peak.py in this run; "
                        "on a GPU: required, its dense bf16/fp16 peak)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--threads", default=None, metavar="INTRA,INTER",
                   help="TF's intra-op and inter-op thread pools (default: TF's, one thread per core each)")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1 or args.batch < 1 or args.warmup < 0:
        p.error("--batch, --steps and --rounds must be >= 1, --warmup >= 0")
    try:
        args.overrides = TrainConfig.parse_overrides(args.overrides)
    except ConfigError as e:
        p.error(str(e))
    if args.threads:
        try:
            intra, inter = (int(n) for n in args.threads.split(","))
        except ValueError:
            p.error(f"--threads {args.threads!r}: use INTRA,INTER, e.g. 2,1")
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    gpus = tf.config.list_physical_devices("GPU")
    device = tf.config.experimental.get_device_details(gpus[0]).get("device_name") if gpus else "CPU"
    if args.peak_gflops is not None:
        peaks = {"given": args.peak_gflops}
    elif gpus:
        p.error("on a GPU pass --peak-gflops (its dense peak at the precision used)")
    else:
        peaks = {"fp32": cpu_peak.measure()["gflops"]}
        if cpu_peak.has_avx512_bf16():
            peaks["bf16"] = cpu_peak.measure(kind="bf16")["gflops"]
    cpu = cpu_name() or platform.processor() or "unknown CPU"
    print(f"device: {device} ({cpu}); {os.cpu_count()} CPU cores; load average "
          f"{os.getloadavg()[0]:.2f}; peak " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items())
          + (" (given)" if args.peak_gflops is not None else " (measured)"), flush=True)
    if not gpus:
        from medsynth.cpu import cpu_flags, cpu_vendor
        from medsynth.train.fastpath import bfloat16_wins

        print(f"{ONEDNN}; both steps below run under it", flush=True)

        rule = bfloat16_wins(cpu_flags(), cpu_vendor())
        print(f"a bf16 3x3 convolution (forward and backward) runs at {probe_bfloat16():.2f}x fp32 here; "
              f"bf16 convolutions {'would win' if rule else 'lose'} alone on this CPU "
              "(medsynth.train.fastpath.bfloat16_wins); the step keeps them off "
              "(--toggle bfloat16_convolutions measures them)",
              flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as work:
        if args.demo:
            cfg = demo_config(args, "-")
            configs = [demo_config(args, str(_prepare(cfg.image_size, cfg.batch_size, Path(work))))]
        else:
            configs = [flags_config(args, s, str(_prepare(s, args.batch, Path(work)))) for s in args.sizes]
        for cfg in configs:
            row = bench(args, cfg, Path(cfg.data), peaks)
            rows.append(row)
            _print(row, peaks)
    if args.json:
        out = {"device": device, "cpu": cpu, "peaks_gflops": peaks, "rows": rows}
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
