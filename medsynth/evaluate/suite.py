"""One entry point for every offline GAN metric: `compute_metrics(real, fake, MetricsConfig(...))`.

The result is a flat dict that goes straight into metrics.json, the KFP
Metrics artifact, the comparison table and the quality gate:

  swd, swd_level_<res>        SWD x 1e3 (ProGAN protocol), mean and per pyramid level   (swd.py)
  fid, kid, kid_std           in the feature space named by `feature_extractor`        (fid.py)
  precision, recall,          k-NN manifolds in the same feature space                   (prdc.py)
  density, coverage
  fd_efflite0, kid_efflite0,  the same on ImageNet EfficientNet-Lite0 features, named by
  kid_std_efflite0,           `pretrained_extractor` (efflite0-imagenet-224px); absent, with
  precision_efflite0, ...     `pretrained_note` saying why, when the weights package is missing
  probe_acc_efflite0          linear-probe accuracy, real vs generated; 0.5 = indistinguishable (probe.py)
  ms_ssim_real, ms_ssim_fake, mean MS-SSIM of random pairs, near-duplicate rates,        (diversity.py)
  dup_rate_real, dup_rate_fake, the collapse alarm and its reason
  collapse, collapse_reason
  mass_rate_fake, mass_rate_real  share of frames with a saturated white/black mass          (masses.py)
  feature_extractor           e.g. inceptionv3-imagenet-299px, inceptionv3-random-s0-75px, or "none"
  n_real, n_fake              frames actually used

Directions, feature spaces and meanings of every key are in `registry.py`. Frames
are a fixed, seeded subset of at most `n` of each input, so the same inputs and
config give the same numbers. Values computed in different feature spaces are
never compared: `registry.check_comparable` refuses them. `real` should be
held-out frames (the validation split): the probe and the collapse alarm judge
the generator against data it has not seen.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from medsynth.errors import ConfigError, DataError
from medsynth.evaluate import diversity as dv
from medsynth.evaluate.frames import as_frames, same_size
from medsynth.evaluate.masses import masses
from medsynth.evaluate.registry import FLOOR_PREFIX, FLOORED, PRETRAINED_SUFFIX, RATIOS, WORST_RATIO

PRETRAINED_MODES = ("auto", "on", "off")
PRDC_K = 5


@dataclass
class MetricsConfig:
    """What to compute and how; every default is the documented protocol of its metric."""

    n: int = 256  # frames used from each side (a seeded subset when more are given)
    seed: int = 0  # patch positions, SWD directions, KID subsets, MS-SSIM pairs, subsetting
    feature_extractor: str = "auto"  # auto | inceptionv3 | inceptionv3-random (see fid.py)
    inception_weights: str = "imagenet"  # imagenet | local path | gs:// URI of the weights .h5
    swd: bool = True
    fid: bool = True  # FID and KID
    prdc: bool = True  # precision, recall, density, coverage
    diversity: bool = True  # MS-SSIM and the collapse alarm
    batch_size: int = 64  # feature-extraction batch
    feature_input_size: int | None = None  # None: 299 for pretrained InceptionV3, 75 for the random one
    extractor_seed: int = 0  # weights of inceptionv3-random; fixed so values stay comparable across runs
    pretrained: str = "auto"  # *_efflite0 metrics: auto (when the weights package is installed) | on | off
    probe_folds: int = 5  # cross-validation folds of the linear probe
    probe_group_threshold: float = dv.GROUP_THRESHOLD  # real near-duplicates (MS-SSIM >=) kept in one fold
    weights_cache_dir: str | None = None  # where gs:// weights are downloaded (default: temp dir)
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    # k of precision/recall's neighbourhoods. 5 with loop-aware neighbourhoods (Reference): real training
    # frames against held-out ones scored P 0.72-0.75, R 0.80-0.83 on the demo's data (k = 3: P 0.63-0.66;
    # without loops P 0.00-0.02 at k = 3), docs/experiments.md
    prdc_k: int = PRDC_K
    swd_patches_per_image: int = 128
    swd_dir_repeats: int = 4
    swd_dirs_per_repeat: int = 128
    swd_min_resolution: int = 16
    ms_ssim_pairs: int | None = None  # None: n pairs per side
    collapse_margin: float = dv.MARGIN  # alarm when ms_ssim_fake >= ms_ssim_real + margin ...
    collapse_absolute: float = dv.ABSOLUTE  # ... or ms_ssim_fake >= this while real is below it ...
    collapse_dup_margin: float = dv.DUP_MARGIN  # ... or dup_rate_fake >= dup_rate_real + this
    collapse_dup_threshold: float = dv.DUP_THRESHOLD  # MS-SSIM that makes a nearest neighbour a duplicate
    progress: bool = True

    def validate(self) -> MetricsConfig:
        """Refuse a config that cannot run, naming the field."""
        positive = ("n", "batch_size", "kid_subsets", "kid_subset_size", "prdc_k", "swd_patches_per_image",
                    "swd_dir_repeats", "swd_dirs_per_repeat", "swd_min_resolution", "probe_folds")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"metrics config: {name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0 or self.extractor_seed < 0:
            raise ConfigError(f"metrics config: seeds must be >= 0, got seed={self.seed}, "
                              f"extractor_seed={self.extractor_seed}")
        if self.n < 2:
            raise ConfigError(f"metrics config: n must be >= 2 (one frame has no statistics), got {self.n}")
        if self.ms_ssim_pairs is not None and self.ms_ssim_pairs < 1:
            raise ConfigError(f"metrics config: ms_ssim_pairs must be >= 1, got {self.ms_ssim_pairs}")
        if self.prdc and self.prdc_k >= self.n:
            raise ConfigError(f"metrics config: prdc_k ({self.prdc_k}) must be < n ({self.n})")
        if not self.inception_weights:
            raise ConfigError("metrics config: inception_weights is empty; use imagenet, a path or gs:// URI")
        if self.pretrained not in PRETRAINED_MODES:
            raise ConfigError(f"metrics config: pretrained must be one of {', '.join(PRETRAINED_MODES)}, "
                              f"got {self.pretrained!r}")
        if self.probe_folds < 2 or self.probe_group_threshold <= 0:
            raise ConfigError(f"metrics config: probe_folds must be >= 2 and probe_group_threshold > 0 "
                              f"(above 1: no grouping), got {self.probe_folds}, {self.probe_group_threshold}")
        if (self.collapse_margin < 0 or not 0 < self.collapse_absolute <= 1
                or not 0 <= self.collapse_dup_margin <= 1 or not 0 < self.collapse_dup_threshold <= 1):
            raise ConfigError("metrics config: collapse_margin must be >= 0, collapse_dup_margin in [0, 1] "
                              "and collapse_absolute, collapse_dup_threshold in (0, 1]")
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricsConfig:
        """Build from a JSON/CLI dict; unknown keys are an error, not silently ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"metrics config: unknown field(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        return cls(**dict(d)).validate()


def compute_metrics(real: np.ndarray, fake: np.ndarray, cfg: MetricsConfig | None = None,
                    timings: dict[str, float] | None = None, real_loops: np.ndarray | None = None,
                    fake_loops: np.ndarray | None = None) -> dict[str, float | str | bool]:
    """All enabled metrics of generated frames against real frames, as one flat dict (see module doc).

    `timings`, when given, receives the seconds each part took (swd, features, fid, prdc,
    pretrained_features, probe, diversity; fid and prdc summed over both feature spaces).
    `*_loops`: the cine loop of each frame, when known (`Reference`).
    """
    return Reference(real, cfg, real_loops).judge(fake, fake_loops, timings)


class Reference:
    """The real side of every comparison, computed once: a seeded subset of the held-out frames, their
    loops and their features in each space. An evaluation judges every kept checkpoint and the
    real-against-real floor against one reference, so the real frames' features are extracted once.

    With `loops` (each frame's cine loop, as the shards carry it) the probe's folds and the k-NN
    neighbourhoods of precision/recall never pair a frame with its own loop: consecutive cine frames are
    near-identical, and without this a held-out frame is recognised by its twin (measured on the demo's
    data: `docs/experiments.md`). Without loops, MS-SSIM near-duplicate groups stand in for the probe.
    """

    def __init__(self, real: np.ndarray, cfg: MetricsConfig | None = None,
                 loops: np.ndarray | None = None) -> None:
        self.cfg = (cfg or MetricsConfig()).validate()
        real = as_frames(real, "real frames", min_count=2)
        keep = _subset(len(real), self.cfg.n, self.cfg.seed, 1)
        self.frames = real[keep]
        self.loops = None if loops is None else _loops(loops, len(real), "real")[keep]
        self._extractors: dict[str, Any] = {}
        self._features: dict[str, np.ndarray] = {}
        self._probe_groups: np.ndarray | None = None

    def judge(self, fake: np.ndarray, loops: np.ndarray | None = None,
              timings: dict[str, float] | None = None) -> dict[str, float | str | bool]:
        """Every enabled metric of `fake` (generated frames, or real ones with their `loops` for the
        floor) against the reference."""
        cfg, real = self.cfg, self.frames
        fake = as_frames(fake, "generated frames", min_count=2)
        same_size(real, fake)
        keep = _subset(len(fake), cfg.n, cfg.seed, 2)
        fake_loops = None if loops is None else _loops(loops, len(fake), "generated")[keep]
        fake = fake[keep]
        clock = _Clock(timings)
        out: dict[str, float | str | bool] = {}

        if cfg.swd:
            from medsynth.evaluate.swd import sliced_wasserstein_distance

            with clock("swd"):
                res = sliced_wasserstein_distance(
                    real, fake, seed=cfg.seed, patches_per_image=cfg.swd_patches_per_image,
                    dir_repeats=cfg.swd_dir_repeats, dirs_per_repeat=cfg.swd_dirs_per_repeat,
                    min_resolution=cfg.swd_min_resolution, progress=cfg.progress)
            out["swd"] = res.mean
            out.update({f"swd_level_{r}": v for r, v in res.per_level.items()})

        out["feature_extractor"] = "none"
        if cfg.fid or cfg.prdc:
            with clock("features"):
                extractor = self._extractor("features")
                feats_real = self._real_features("features")
                feats_fake = extractor(fake, cfg.progress, "features generated")
            out["feature_extractor"] = extractor.name
            found = self._feature_metrics(feats_real, feats_fake, fake_loops, clock)
            out.update({("fid" if k == "fd" else k): v for k, v in found.items()})

        if cfg.pretrained != "off":
            out.update(self._pretrained_metrics(fake, fake_loops, clock))

        if cfg.diversity:
            with clock("diversity"):
                out.update(dv.diversity(real, fake, num_pairs=cfg.ms_ssim_pairs or cfg.n, seed=cfg.seed,
                                        margin=cfg.collapse_margin, absolute=cfg.collapse_absolute,
                                        dup_margin=cfg.collapse_dup_margin,
                                        dup_threshold=cfg.collapse_dup_threshold, progress=cfg.progress))
                out.update(masses(real, fake))
        out["n_real"] = len(real)
        out["n_fake"] = len(fake)
        return out

    def floor(self, sample: np.ndarray, loops: np.ndarray | None = None,
              timings: dict[str, float] | None = None) -> dict[str, float | str | bool]:
        """The floor_* keys: real frames `sample` (another real sample: training-split frames, same n)
        judged like a generator against the same reference. A distance reads beside its floor."""
        found = self.judge(sample, loops, timings)
        return {f"{FLOOR_PREFIX}{k}": found[k] for k in FLOORED if k in found}

    def _extractor(self, kind: str) -> Any:
        if kind not in self._extractors:
            cfg = self.cfg
            if kind == "features":
                from medsynth.evaluate.fid import get_extractor

                self._extractors[kind] = get_extractor(
                    cfg.feature_extractor, cfg.inception_weights, batch_size=cfg.batch_size,
                    input_size=cfg.feature_input_size, seed=cfg.extractor_seed,
                    cache_dir=cfg.weights_cache_dir)
            else:
                from medsynth.evaluate.fid import pretrained_extractor

                self._extractors[kind] = pretrained_extractor(cfg.batch_size)
        return self._extractors[kind]

    def _real_features(self, kind: str) -> np.ndarray:
        if kind not in self._features:
            label = "features real" if kind == "features" else "pretrained features real"
            self._features[kind] = self._extractor(kind)(self.frames, self.cfg.progress, label)
        return self._features[kind]

    def _feature_metrics(self, feats_real: np.ndarray, feats_fake: np.ndarray, fake_loops: np.ndarray | None,
                         clock: _Clock) -> dict[str, float]:
        """fd, kid, kid_std, precision, recall, density, coverage of one feature space (as enabled)."""
        from medsynth.evaluate.fid import frechet_distance, kernel_inception_distance

        cfg = self.cfg
        out: dict[str, float] = {}
        if cfg.fid:
            with clock("fid"):
                out["fd"] = frechet_distance(feats_real, feats_fake)
                # Subsets of at most half the frames, so that they differ and kid_std means something.
                subset = min(cfg.kid_subset_size, max(2, min(len(feats_real), len(feats_fake)) // 2))
                out["kid"], out["kid_std"] = kernel_inception_distance(
                    feats_real, feats_fake, cfg.kid_subsets, subset, seed=cfg.seed)
        if cfg.prdc:
            from medsynth.evaluate.prdc import precision_recall

            with clock("prdc"):
                out.update(precision_recall(feats_real, feats_fake, k=cfg.prdc_k, real_groups=self.loops,
                                            fake_groups=fake_loops))
        return out

    def _pretrained_metrics(self, fake: np.ndarray, fake_loops: np.ndarray | None,
                            clock: _Clock) -> dict[str, float | str]:
        """The *_efflite0 metrics and the linear probe, or only a note saying why they cannot be computed."""
        from medsynth.evaluate.fid import pretrained_missing
        from medsynth.evaluate.probe import linear_probe_accuracy

        cfg = self.cfg
        missing = pretrained_missing()
        if missing and cfg.pretrained == "on":
            raise ConfigError(f"metrics config: pretrained=on, but {missing}; or use pretrained=auto/off")
        if missing:
            return {"pretrained_note": f"pretrained-feature metrics (*{PRETRAINED_SUFFIX}) not computed: "
                                       f"{missing}"}
        with clock("pretrained_features"):
            extractor = self._extractor("pretrained")
            feats_real = self._real_features("pretrained")
            feats_fake = extractor(fake, cfg.progress, "pretrained features generated")
        out: dict[str, float | str] = {"pretrained_extractor": extractor.name}
        found = self._feature_metrics(feats_real, feats_fake, fake_loops, clock)
        out.update({f"{k}{PRETRAINED_SUFFIX}": v for k, v in found.items()})
        with clock("probe"):
            try:
                out[f"probe_acc{PRETRAINED_SUFFIX}"] = linear_probe_accuracy(
                    feats_real, feats_fake, cfg.probe_folds, cfg.seed, real_groups=self._groups(),
                    fake_groups=fake_loops)
            except DataError as exc:  # e.g. every real frame a near-duplicate of another: nothing to hold out
                out["pretrained_note"] = f"{exc} (probe_acc{PRETRAINED_SUFFIX} not computed)"
        return out

    def _groups(self) -> np.ndarray:
        """The probe's real groups: loops when known, else MS-SSIM near-duplicate groups."""
        if self.loops is not None:
            return self.loops
        if self._probe_groups is None:
            self._probe_groups = dv.near_duplicate_groups(self.frames, self.cfg.probe_group_threshold)
        return self._probe_groups


def with_floor(metrics: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """`metrics` with the floor_* keys beside them and each distance's ratio to its floor:
    fd_ratio_efflite0, swd_ratio and ratio_to_floor, the worse of the two (what ranks: see registry)."""
    out = {**metrics, **floor}
    for key, ratio in RATIOS.items():
        value, base = out.get(key), out.get(f"{FLOOR_PREFIX}{key}")
        if _positive(value) and _positive(base):
            out[ratio] = float(value) / float(base)
    parts = [out[r] for r in RATIOS.values() if r in out]
    if len(parts) == len(RATIOS):
        out[WORST_RATIO] = max(parts)
    return out


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and bool(np.isfinite(v)) and v > 0


def _loops(loops: np.ndarray, count: int, side: str) -> np.ndarray:
    loops = np.asarray(loops)
    if loops.shape != (count,):
        raise DataError(f"{side} frames: {loops.shape} loop ids for {count} frames")
    return loops


def _subset(count: int, n: int, seed: int, stream: int) -> np.ndarray:
    """Indices of a seeded subset of n of `count` frames (in input order), or all when there are not more."""
    if count <= n:
        return np.arange(count)
    rng = np.random.default_rng([seed, stream, 0x5B])
    return np.sort(rng.choice(count, n, replace=False))


class _Clock:
    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink = sink

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.sink is not None:
            self.sink[self.name] = self.sink.get(self.name, 0.0) + time.perf_counter() - self.start
