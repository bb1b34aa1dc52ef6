"""The utility experiment: do a generator's synthetic labelled frames make a tracker better than what a
practitioner would try without one?

A clinic has N annotated frames and many unannotated ones. For every seed and every N:
1. the N labelled frames become their own data set (a seeded subset of the training split; the
   held-out split is the parent's, untouched); the parent's other training frames are the
   *unlabelled* ones: only their pixels are read (`data.subset.unlabelled_images`);
2. `real`: a tracker trains on the N frames; `augmented`: the same with classic augmentation;
3. the `real` tracker labels the unlabelled frames (`tracker.pseudo`); `self-training`: a tracker
   trains on the N frames and the confidently labelled ones;
4. the key-point-conditioned generator trains on *every* training frame: the N with their labels,
   the rest with the `real` tracker's key points as their layout (an unsure tip is left out), so it
   learns vessel trees from all of them and the condition from the labels; M synthetic frames are
   drawn for layouts taken from the N frames (`layouts.sample_layouts`);
5. `mixed`: a tracker trains with the synthetic frames in each batch; `pretrain-finetune`: on them
   alone for the first steps, then on the N frames alone; `augmented-mixed`: `mixed` with the classic
   augmentation of `augmented`.
Every tracker has the same steps, batch and seed, and is judged on the held-out real frames. Nothing
of the held-out patients reaches a generator, a pseudo-labeller or a subset.

Each part is kept when finished (the subset, the pseudo-labels, the generator's data set and run, the
synthetic frames, each arm's tracker in its own folder), so a stopped experiment continues where it
stopped, and an arm whose metrics.json exists is not trained again.
"""

from __future__ import annotations

import datetime
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medsynth import storage
from medsynth.data.keypoints import FramePoints, LabelledFrames, heatmaps
from medsynth.errors import ConfigError, DataError
from medsynth.utility import report
from medsynth.utility.arms import ARMS, CLASSIC, GENERATOR_ARMS, REFERENCE, check_arms
from medsynth.utility.layouts import Jitter, sample_layouts

if TYPE_CHECKING:
    from medsynth.tracker.pseudo import PseudoLabels

log = logging.getLogger("medsynth")

RESULTS = "results.json"
PSEUDO = "pseudo.npz"
PICTURE = "synthetic.png"


@dataclass
class UtilityConfig:
    data: str  # a prepared, labelled data set, or a source (builtin://phantom, a folder, …)
    out: str  # local directory of the experiment (resumable)
    image_size: int = 64
    n_real: tuple[int, ...] = (32, 64, 256)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    arms: tuple[str, ...] = ARMS
    n_synthetic: int = 4000  # M synthetic frames the generator arms draw from
    gan_config: str = "pg-fastgan-sep-lite0"  # a named configuration (train.candidates) or a D backbone
    gan_steps: int = 2000
    gan_batch_size: int = 16
    tracker_steps: int = 1500
    tracker_batch_size: int = 32
    synthetic_fraction: float = 0.5  # mixed: share of each tracker batch drawn from the synthetic frames
    pretrain_share: float = 0.5  # pretrain-finetune: share of the tracker's steps on synthetic frames alone
    pseudo_confidence: float = 0.5  # a pseudo-labelled frame is kept when its tip's heat-map peak reaches it
    pseudo_fraction: float = 0.5  # self-training: share of each batch drawn from the kept frames
    phantom_frames: int = 3072  # when `data` is builtin://phantom
    publish: str = ""  # also copy the report here as utility-<size>px-<date>.* (e.g. bench/results)
    jitter: Jitter = field(default_factory=Jitter)

    def validate(self) -> None:
        for name in ("n_real", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"--{name.replace('_', '-')} needs at least one value")
        if any(n < 1 for n in self.n_real):
            raise ConfigError(f"--n-real values must be >= 1, got {list(self.n_real)}")
        if any(s < 0 for s in self.seeds):
            raise ConfigError(f"--seeds must be >= 0, got {list(self.seeds)}")
        self.arms = check_arms(self.arms)
        if self.n_synthetic < 1:
            raise ConfigError(f"--n-synthetic must be >= 1, got {self.n_synthetic}")
        if self.gan_steps < 1 or self.tracker_steps < 2:
            raise ConfigError(
                f"--gan-steps must be >= 1 and --tracker-steps >= 2, got {self.gan_steps} and "
                f"{self.tracker_steps}"
            )
        for name in ("synthetic_fraction", "pretrain_share", "pseudo_confidence", "pseudo_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 1), got {value}")
        if storage.is_gcs(self.out):
            raise ConfigError(f"--out {self.out}: the experiment writes a local directory; copy it up after")
        if set(self.arms) & set(GENERATOR_ARMS):
            _generator_options(self.gan_config)  # an unknown or unconditional configuration fails now

    def pretrain_steps(self) -> int:
        """Tracker steps of `pretrain-finetune` on synthetic frames alone (at least 1, at most all but 1)."""
        return min(max(1, round(self.tracker_steps * self.pretrain_share)), self.tracker_steps - 1)


def run_utility(cfg: UtilityConfig) -> dict[str, Any]:
    """Run (or continue) every arm, then write results.json, utility.md, utility.png and the picture
    of the judged arm's synthetic frames in `out` (and a dated copy in `publish`)."""
    from medsynth.cache import cache_root
    from medsynth.data.input import labelled_frames, resolve_dataset

    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    storage.atomic_write_json(out / "config.json", storage.jsonable(asdict(cfg)))
    dataset = resolve_dataset(
        cfg.data, cfg.image_size, cache_root("work"), seed=0, phantom_frames=cfg.phantom_frames
    )
    val = labelled_frames(dataset, "val")
    if len(val) == 0:
        raise DataError(f"data set {cfg.data} has no labelled held-out (val) frames to judge trackers on")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    for seed in cfg.seeds:
        for n in cfg.n_real:
            results += _cell(cfg, dataset, val, n, seed, out / f"n{n}-seed{seed}")
            log.info(
                "utility: N=%d seed %d done (%.0f min so far)", n, seed, (time.monotonic() - started) / 60
            )
    rows = report.summarise(results)
    judgement = report.judge(rows)
    grid = out / f"n{judgement['n']}-seed{cfg.seeds[0]}" / PICTURE
    if grid.exists():
        storage.atomic_write_bytes(out / PICTURE, grid.read_bytes())
    picture = PICTURE if (out / PICTURE).exists() else None
    summary = {
        "config": storage.jsonable(asdict(cfg)),
        "dataset": str(dataset),
        "val_frames": len(val),
        "results": results,
        "rows": rows,
        "verdict": {**report.overall_verdict(rows), **judgement},
    }
    notes = [*_notes(cfg, len(val)), _kept_note(results)]
    storage.atomic_write_json(out / RESULTS, storage.jsonable(summary))
    storage.atomic_write_text(out / "utility.md", report.markdown(rows, notes, picture))
    report.plot(rows, out / "utility.png")
    if cfg.publish:
        _publish(cfg, out, rows, notes, picture)
    return summary


def _notes(cfg: UtilityConfig, val_frames: int) -> list[str]:
    return [
        f"held-out real frames: {val_frames} (the data set's val split, patients never seen in training)",
        f"tracker: {cfg.tracker_steps} steps of {cfg.tracker_batch_size} frames in every arm, the same seed; "
        "flips, brightness and contrast in every arm; augmented adds ±{rotate_deg:.0f}° rotation, "
        "±{scale:.0%} zoom and gamma e^±{gamma}".format(**CLASSIC),
        f"self-training: the real arm's tracker labels the unlabelled training frames; frames whose tip "
        f"peak reaches {cfg.pseudo_confidence} are kept, {cfg.pseudo_fraction:.0%} of each batch",
        f"generator: {cfg.gan_config}, key-point-conditioned, {cfg.gan_steps} steps on every training frame "
        "(the N labelled, the others with the real tracker's key points); "
        f"{cfg.n_synthetic} synthetic frames for layouts drawn from the N frames (mirror, "
        f"±{cfg.jitter.rotate_deg:.0f}°, ±{cfg.jitter.scale:.0%} scale, ±{cfg.jitter.shift:.0%} shift)",
        f"mixed: {cfg.synthetic_fraction:.0%} of each batch synthetic; pretrain-finetune: the first "
        f"{cfg.pretrain_steps()} of the {cfg.tracker_steps} steps on synthetic frames alone, then real "
        "frames alone" + ("; augmented-mixed: mixed with augmented's augmentation"
                          if "augmented-mixed" in cfg.arms else ""),
    ]


def _kept_note(results: list[dict[str, Any]]) -> str:
    """What share of the unlabelled frames self-training kept, per N (mean over seeds), and the median
    tip confidence it was judged on."""
    found: dict[int, list[tuple[float, float]]] = {}
    for r in results:
        if r.get("pseudo"):
            p = r["pseudo"]
            spread = p["tip_score_p10_p50_p90"] or [np.nan] * 3
            found.setdefault(r["n_real"], []).append((p["share"], spread[1]))
    if not found:
        return "self-training: not run"
    kept = ", ".join(
        f"N={n} {np.mean([a for a, _ in v]):.0%} (median tip confidence {np.mean([b for _, b in v]):.2f})"
        for n, v in sorted(found.items())
    )
    return f"self-training kept of the unlabelled frames (mean over seeds): {kept}"


def _publish(
    cfg: UtilityConfig, out: Path, rows: list[dict[str, Any]], notes: list[str], picture: str | None
) -> None:
    """A dated copy of the report, its raw results, the plot and the picture in `cfg.publish`."""
    stem = f"utility-{cfg.image_size}px-{datetime.date.today().isoformat()}"
    dest = Path(cfg.publish)
    dest.mkdir(parents=True, exist_ok=True)
    shown = f"{stem}-synthetic.png" if picture else None
    if picture:
        shutil.copyfile(out / picture, dest / f".{shown}.tmp")
        (dest / f".{shown}.tmp").replace(dest / shown)
    storage.atomic_write_bytes(dest / f"{stem}.json", (out / RESULTS).read_bytes())
    storage.atomic_write_bytes(dest / f"{stem}.png", (out / "utility.png").read_bytes())
    storage.atomic_write_text(dest / f"{stem}.md", report.markdown(rows, notes, shown))
    log.info("utility: report published as %s/%s.md", dest, stem)


# ------------------------------------------------------------------------------------------ one cell


def _cell(
    cfg: UtilityConfig, dataset: Path, val: LabelledFrames, n: int, seed: int, cell: Path
) -> list[dict[str, Any]]:
    """Every arm of one (N, seed), each skipped when its tracker has finished."""
    from medsynth.data.input import labelled_frames
    from medsynth.data.subset import write_labelled_subset

    subset = Path(write_labelled_subset(dataset, n, seed, cell / "data"))
    real = labelled_frames(subset, "train")
    if len(real) < n:
        raise DataError(f"data set {cfg.data} has {len(real)} labelled training frames, fewer than N = {n}")

    def arm(name: str, extra: LabelledFrames | None = None, **options: Any) -> dict[str, Any]:
        return _arm(cfg, name, n, seed, real, extra, val, cell / f"tracker-{name}", options)

    rows = [arm(REFERENCE)]
    if "augmented" in cfg.arms:
        rows.append(arm("augmented", **CLASSIC))
    pending = [a for a in cfg.arms if a != REFERENCE and not _done(cell, a)]
    needs_generator = any(a in GENERATOR_ARMS for a in pending) and not _pool_ready(cfg, cell)
    pseudo = positions = None
    if "self-training" in pending or needs_generator:
        pseudo, positions = _pseudo_labels(cfg, dataset, subset, cell)
    if "self-training" in cfg.arms:
        kept = pseudo.kept() if pseudo is not None else None  # None: the arm has finished
        row = arm("self-training", kept if kept is not None and len(kept) else None,
                  synthetic_fraction=cfg.pseudo_fraction)  # fmt: skip
        rows.append(row | {"pseudo": _pseudo_counts(cell)})
    generator_arms = [a for a in cfg.arms if a in GENERATOR_ARMS]
    if generator_arms:
        pool = None
        if any(a in pending for a in generator_arms):
            if needs_generator:
                labels = dict(zip(positions.tolist(), pseudo.layouts(), strict=True))
                _train_generator(cfg, dataset, subset, labels, seed, cell)
            pool = _synthetic_pool(
                cell / "generator", real, cfg.n_synthetic, seed, cfg.jitter, cell / "synthetic.npz"
            )
            _grid(pool, cell / PICTURE, f"N={n} seed {seed}: synthetic frames for layouts of the N frames")
        if "mixed" in generator_arms:
            row = arm("mixed", pool, synthetic_fraction=cfg.synthetic_fraction)
            rows.append(row | {"n_synthetic": cfg.n_synthetic})
        if "pretrain-finetune" in generator_arms:
            row = arm("pretrain-finetune", pool, pretrain_steps=cfg.pretrain_steps())
            rows.append(row | {"n_synthetic": cfg.n_synthetic})
        if "augmented-mixed" in generator_arms:
            row = arm("augmented-mixed", pool, synthetic_fraction=cfg.synthetic_fraction, **CLASSIC)
            rows.append(row | {"n_synthetic": cfg.n_synthetic})
    return rows


def _done(cell: Path, arm: str) -> bool:
    return (cell / f"tracker-{arm}" / "metrics.json").exists()


def _arm(
    cfg: UtilityConfig,
    name: str,
    n: int,
    seed: int,
    real: LabelledFrames,
    extra: LabelledFrames | None,
    val: LabelledFrames,
    run: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    """One arm's tracker (kept in `run`; its metrics.json means done): the same steps, batch and seed
    as every other arm, `extra` its second source of labelled frames."""
    from medsynth.tracker.train import TrackerConfig, train_tracker

    done = run / "metrics.json"
    if done.exists():
        metrics = storage.read_json(done)
    else:
        tcfg = TrackerConfig(
            out=str(run), steps=cfg.tracker_steps, batch_size=cfg.tracker_batch_size, seed=seed, **options
        )
        source = {"arm": name, "n_real": n, "second_source": None if extra is None else len(extra)}
        metrics = train_tracker(tcfg, real, extra, val, source)
    log.info("utility: N=%d %s seed %d: %s", n, name, seed, _brief(metrics))
    return {"n_real": n, "arm": name, "seed": seed, "metrics": metrics, "run": str(run)}


# ----------------------------------------------------------------------------- the unlabelled frames


def _pseudo_labels(
    cfg: UtilityConfig, dataset: Path, subset: Path, cell: Path
) -> tuple[PseudoLabels, np.ndarray]:
    """The `real` arm's key points on every unlabelled training frame, and the frames' positions in
    the parent's train split (kept in pseudo.npz without the pixels: they are read again from the
    parent, labels never)."""
    from medsynth.data.subset import unlabelled_images
    from medsynth.tracker.pseudo import PseudoLabels, pseudo_label

    images, positions = unlabelled_images(dataset, subset)
    path = cell / PSEUDO
    if path.exists():
        with np.load(path) as z:
            if np.array_equal(z["positions"], positions) and float(z["confidence"]) == cfg.pseudo_confidence:
                frames = LabelledFrames(images, z["points"], z["classes"], z["mask"])
                return PseudoLabels(frames, z["tip_scores"], z["confident"]), positions
    pseudo = pseudo_label(cell / f"tracker-{REFERENCE}", images, cfg.pseudo_confidence)
    f = pseudo.frames
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp, positions=positions, points=f.points, classes=f.classes, mask=f.mask,
        tip_scores=pseudo.tip_scores, confident=pseudo.confident, confidence=cfg.pseudo_confidence,
    )  # fmt: skip
    tmp.replace(path)
    log.info(
        "utility: %s: %d of %d unlabelled frames pseudo-labelled with tip confidence >= %.2f",
        cell.name, int(pseudo.confident.sum()), len(positions), cfg.pseudo_confidence,
    )  # fmt: skip
    return pseudo, positions


def _pseudo_counts(cell: Path) -> dict[str, Any]:
    """How many unlabelled frames there were, how many self-training kept, and the spread of the tip
    confidences (to see what a --pseudo-confidence would keep), from pseudo.npz."""
    path = cell / PSEUDO
    if not path.exists():
        return {}
    with np.load(path) as z:
        frames, kept = len(z["positions"]), int(z["confident"].sum())
        quantiles = np.quantile(z["tip_scores"], [0.1, 0.5, 0.9]).tolist() if frames else []
        return {
            "frames": frames,
            "kept": kept,
            "share": kept / frames if frames else 0.0,
            "confidence": float(z["confidence"]),
            "tip_score_p10_p50_p90": quantiles,
        }


# ---------------------------------------------------------------------------------------- generator


def _generator_options(name: str) -> dict[str, Any]:
    """TrainConfig fields of `name` (a named configuration or a backbone), refused unless its D can
    judge a frame with its key points."""
    from medsynth.models.discriminator import check_conditional_head, resolve_head
    from medsynth.train.candidates import candidate_options

    options = candidate_options(name)
    try:
        check_conditional_head(options["backbone"], resolve_head(options["backbone"], options.get("d_head")))
    except ConfigError as e:
        raise ConfigError(f"--gan-config {name}: {e}") from None
    return options


def _pool_ready(cfg: UtilityConfig, cell: Path) -> bool:
    path = cell / "synthetic.npz"
    if not path.exists():
        return False
    with np.load(path) as z:
        return len(z["images"]) >= cfg.n_synthetic


def _train_generator(
    cfg: UtilityConfig, dataset: Path, subset: Path, labels: dict[int, FramePoints], seed: int, cell: Path
) -> None:
    """The conditional generator of one (N, seed), on every training frame: the subset's with their
    labels, the others with the layouts `labels` gives them by position (`PseudoLabels.layouts`)."""
    from medsynth.data.subset import write_pseudo_labelled
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    data = write_pseudo_labelled(dataset, subset, labels, cell / "gan-data")
    frames = int(storage.read_json(data / "manifest.json")["splits"]["train"]["frames"])
    train(
        TrainConfig(
            data=str(data),
            out=str(cell / "generator"),
            image_size=cfg.image_size,
            steps=cfg.gan_steps,
            batch_size=min(cfg.gan_batch_size, _pow2_floor(frames)),
            seed=seed,
            condition="keypoints",
            checkpoint_every=max(1, cfg.gan_steps // 2),
            **_generator_options(cfg.gan_config),
        )
    )


def _pow2_floor(n: int) -> int:
    return 1 << max(0, int(n).bit_length() - 1)


def _synthetic_pool(
    run: Path, real: LabelledFrames, m: int, seed: int, jitter: Jitter, path: Path
) -> LabelledFrames:
    """`m` synthetic labelled frames from the run's generator (its moving average), kept in `path`."""
    if path.exists():
        with np.load(path) as z:
            if len(z["images"]) >= m:
                return LabelledFrames(z["images"][:m], z["points"][:m], z["classes"][:m], z["mask"][:m], True)
    points, classes, mask, _ = sample_layouts(real, m, seed, jitter)
    images = synthesize(run, points, classes, mask, seed)
    pool = LabelledFrames(images, points, classes, mask, synthetic=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=images, points=points, classes=classes, mask=mask, synthetic=True)
    tmp.replace(path)
    return pool


def synthesize(
    run: str | Path, points: np.ndarray, classes: np.ndarray, mask: np.ndarray, seed: int, batch: int = 256
) -> np.ndarray:
    """uint8 frames [m, S, S] the run's conditional generator makes for the given layouts."""
    import tensorflow as tf

    from medsynth.pictures import to_uint8
    from medsynth.train.checkpoints import load_generator

    generator, info = load_generator(run)
    size, latent = int(info["image_size"]), int(info["latent_dim"])
    out = np.empty((len(points), size, size), np.uint8)
    for start in range(0, len(points), batch):
        end = min(start + batch, len(points))
        z = tf.random.stateless_normal([end - start, latent], seed=[seed, start])
        h = heatmaps(points[start:end], classes[start:end], mask[start:end], size)
        out[start:end] = to_uint8(generator([z, h], training=False).numpy())
    return out


def _grid(frames: LabelledFrames, path: Path, title: str, count: int = 16) -> None:
    """The first synthetic frames with the key points they were asked for (tip red, bifurcations green)."""
    from medsynth.pictures import save_grid

    k = min(count, len(frames))
    marks = [(f.points, f.classes) for f in (frames.frame_points(i) for i in range(k))]
    save_grid(frames.images[:k], path, title=title, synthetic=True, keypoints=marks)


def _brief(metrics: dict[str, Any]) -> str:
    keys = ("val_tip_error_median_px", "val_tip_pck5", "val_bif_f1")
    return ", ".join(f"{k} {metrics[k]:.3g}" for k in keys if isinstance(metrics.get(k), (int, float)))

