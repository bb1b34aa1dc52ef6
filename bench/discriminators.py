"""Discriminators side by side: the convnet baseline, the paper's head on a frozen ImageNet network,
and Projected GAN's head on the same network — same data, seeds and step budget.

    .venv/bin/python bench/discriminators.py [--size 64] [--steps 1200] [--eval-every 200]
        [--seeds 0 1 2] [--configs convnet lite0-paper lite0-projected] [--out bench-out/discriminators]

Each (configuration, seed) trains `medsynth train` on the phantom and keeps every checkpoint; every
checkpoint is then judged like the pipeline's evaluate step (medsynth.evaluate.suite on the real
frames held out by the split): SWD, Fréchet distance / precision / recall / linear-probe accuracy
in ImageNet EfficientNet-Lite0 features, MS-SSIM diversity and the collapse alarm. Printed and
written (JSON, Markdown, a curve of FD against wall-clock time, the final sample grids):

- the final metrics, mean ± spread over seeds, and the training speed (images/s);
- time to quality: wall-clock seconds until the first checkpoint without a collapse alarm whose FD
  is at or below the baseline's final mean FD (Projected GAN's headline is reaching a given FID
  many times sooner). The baseline is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {
    # name: (backbone, backbone weights, head)
    "convnet": ("convnet", "none", "auto"),
    "lite0-paper": ("efficientnet_lite0", "imagenet", "paper"),
    "lite0-projected": ("efficientnet_lite0", "imagenet", "projected"),
}
FD = "fd_efflite0"


def train_one(data_dir: Path, out: Path, name: str, seed: int, args: argparse.Namespace) -> dict:
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    backbone, weights, head = CONFIGS[name]
    cfg = TrainConfig(data=str(data_dir), out=str(out), image_size=args.size, steps=args.steps,
                      batch_size=args.batch, seed=seed, backbone=backbone, backbone_weights=weights,
                      d_head=head, checkpoint_every=args.eval_every, keep_checkpoints=10_000,
                      log_every=50)
    started = time.time()
    result = train(cfg)
    return {"started": started, **result.metrics}


def judge(run: Path, data_dir: Path, started: float, args: argparse.Namespace) -> tuple[list[dict], dict]:
    """Metrics of every checkpoint of `run`, oldest first, with its wall-clock time into training
    (when its index file was written: TF writes it last), of the generator a run ships (G's moving
    average); and, for the last checkpoint, of G itself: what the average changes, in the same run."""
    import tensorflow as tf

    from medsynth.data.input import real_frames
    from medsynth.evaluate.report import generate_frames
    from medsynth.evaluate.suite import MetricsConfig, compute_metrics
    from medsynth.models.generator import build_generator
    from medsynth.pictures import save_grid
    from medsynth.train.checkpoints import load_run_config, local_checkpoints, restore_generator

    cfg = load_run_config(run)
    real = real_frames(data_dir, split="val", n=args.eval_frames, seed=0)

    def metrics_of(prefix: str, itself: bool = False) -> tuple[dict, object]:
        g = build_generator(cfg.image_size, **cfg.generator_options())
        if itself:
            tf.train.Checkpoint(generator=g).restore(prefix).expect_partial()
        else:
            restore_generator(g, prefix)
        fake = generate_frames(g, len(real), cfg.latent_dim, seed=0)
        return compute_metrics(real, fake, MetricsConfig(n=len(real), progress=False)), fake

    rows, itself = [], {}
    for step, prefix in local_checkpoints(run / "checkpoints"):
        m, fake = metrics_of(prefix)
        elapsed = Path(prefix + ".index").stat().st_mtime - started
        rows.append({"step": step, "elapsed_s": elapsed, **m})
        if step == args.steps:
            save_grid(fake[:16], run / "final_samples.png", title=f"{run.parent.name} seed {run.name}")
            if cfg.g_ema_kimg:
                itself, _ = metrics_of(prefix, itself=True)
    return rows, itself


def summarize(results: dict, baseline_fd: float | None) -> list[dict]:
    table = []
    for name, runs in results.items():
        table.append(_row(name, runs, [r["checkpoints"][-1] for r in runs.values()], baseline_fd))
        itself = [r["final_g_itself"] for r in runs.values() if r.get("final_g_itself")]
        if itself:
            table.append(_row(f"{name}: G itself, not its average", runs, itself, None))
    return table


def _row(name: str, runs: dict, finals: list[dict], baseline_fd: float | None) -> dict:
    """Final metrics over seeds (mean, min–max), speed, and each seed's time to the baseline's FD."""
    row: dict = {"config": name, "seeds": len(finals)}
    for key in ("swd", FD, "precision_efflite0", "recall_efflite0", "probe_acc_efflite0",
                "ms_ssim_fake", "ms_ssim_real"):
        values = [f[key] for f in finals if isinstance(f.get(key), (int, float))]
        if values:
            row[key] = statistics.fmean(values)
            row[key + "_spread"] = (min(values), max(values))
    row["collapsed"] = sum(bool(f.get("collapse")) for f in finals)
    row["images_per_s"] = statistics.fmean(r["train"]["images_per_s"] for r in runs.values())
    times = []
    for r in runs.values():
        hit = next((c for c in r["checkpoints"] if baseline_fd is not None and not c.get("collapse")
                    and c.get(FD, float("inf")) <= baseline_fd), None)
        times.append(hit["elapsed_s"] if hit else None)
    row["time_to_quality_s"] = times if baseline_fd is not None else []
    return row


def markdown(table: list[dict], baseline_fd: float | None, args: argparse.Namespace) -> str:
    def cell(row: dict, key: str) -> str:
        if key not in row:
            return "–"
        lo, hi = row[key + "_spread"]
        return f"{row[key]:.3g} ({lo:.3g}–{hi:.3g})"

    lines = [
        f"Discriminators at {args.size} px on the phantom, {args.steps} steps of batch {args.batch}, "
        f"seeds {', '.join(map(str, args.seeds))}: mean (min–max over seeds) of the final checkpoint.",
        "",
        "| D | SWD ×1e3 ↓ | FD Lite0 ↓ | precision ↑ | recall ↑ | probe acc. (0.5 best) ↓ | "
        "MS-SSIM gen ↓ | collapsed | img/s | time to baseline FD (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        ttq = ", ".join("never" if t is None else f"{t:.0f}" for t in r["time_to_quality_s"]) or "–"
        lines.append(
            f"| {r['config']} | {cell(r, 'swd')} | {cell(r, FD)} | {cell(r, 'precision_efflite0')} | "
            f"{cell(r, 'recall_efflite0')} | {cell(r, 'probe_acc_efflite0')} | {cell(r, 'ms_ssim_fake')} | "
            f"{r['collapsed']}/{r['seeds']} | {r['images_per_s']:.1f} | {ttq} |")
    if baseline_fd is not None:
        lines += ["", f"Baseline FD (convnet's final mean): {baseline_fd:.3g}."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    colors = dict(zip(results, ("#888", "#c44", "#37a", "#4a7"), strict=False))
    for name, runs in results.items():
        for seed, r in runs.items():
            pts = [(c["elapsed_s"], c[FD]) for c in r["checkpoints"] if FD in c]
            if pts:
                ax.plot(*zip(*pts, strict=True), color=colors[name], marker="o", ms=3,
                        label=name if seed == min(runs) else None)
    ax.set_xlabel("wall-clock seconds of training")
    ax.set_ylabel("FD in EfficientNet-Lite0 features ↓")
    ax.set_yscale("log")
    ax.set_title("Time to quality per discriminator (one line per seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--eval-frames", type=int, default=256)
    ap.add_argument("--phantom-frames", type=int, default=3072)  # > 256 held-out frames
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default="bench-out/discriminators")
    args = ap.parse_args()

    from medsynth.data.prepare import PrepareConfig, prepare
    from medsynth.storage import atomic_write_text

    out = Path(args.out)
    data_dir = Path(prepare(PrepareConfig(source="builtin://phantom", out=str(out / "store"),
                                          image_size=args.size, phantom_frames=args.phantom_frames)))
    # Rerun with the same arguments, it picks up where it stopped: runs judged before are kept.
    done_path = out / "results.json"
    done = json.loads(done_path.read_text()) if done_path.exists() else {}
    results: dict[str, dict[int, dict]] = {}
    for name in args.configs:
        for seed in args.seeds:
            run = out / name / str(seed)
            old = done.get(name, {}).get(str(seed))
            if old and old["checkpoints"] and old["checkpoints"][-1]["step"] == args.steps:
                results.setdefault(name, {})[seed] = old
                continue
            if run.exists():  # stopped half-way: its checkpoints' times would not be this run's
                shutil.rmtree(run)
            print(f"== {name} seed {seed}", flush=True)
            train_metrics = train_one(data_dir, run, name, seed, args)
            checkpoints, itself = judge(run, data_dir, train_metrics["started"], args)
            results.setdefault(name, {})[seed] = {"train": train_metrics, "checkpoints": checkpoints,
                                                  "final_g_itself": itself}
            atomic_write_text(done_path, json.dumps(results, indent=1, default=str))
    base = results.get("convnet")
    baseline_fd = (statistics.fmean(r["checkpoints"][-1][FD] for r in base.values())
                   if base and all(FD in r["checkpoints"][-1] for r in base.values()) else None)
    table = summarize(results, baseline_fd)
    text = markdown(table, baseline_fd, args)
    (out / "summary.md").write_text(text)
    plot(results, out / "fd_vs_time.png")
    print(text)
    print(f"written: {out / 'summary.md'}, {out / 'fd_vs_time.png'}, {out}/<config>/<seed>/final_samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
