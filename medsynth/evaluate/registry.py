"""Every metric key in one table: which way is better, which space it lives in, what it means.

The comparison (`compare.py`), the quality gate (`serving/push.py`) and the pages a reader sees
(`report.py`, `compare.py`) all read this table, so a metric's direction or meaning is written once.

Feature spaces: a value computed from features only compares with a value from the same features.
Each result names its spaces: `feature_extractor` for `fid`, `kid`, `precision`, ... (InceptionV3 with
ImageNet weights on a cluster, its random-weight fallback here) and `pretrained_extractor` for the
`*_efflite0` metrics (EfficientNet-Lite0 ImageNet). `check_comparable` refuses to mix them.

Floors: a distance means nothing without the value a second real sample gets. Every evaluation
judges a seeded sample of training-split frames (same n) against the same held-out frames and keeps
the result under `floor_<key>` for the keys of FLOORED; `fd_ratio_efflite0` and `swd_ratio` divide
each distance by its floor (1 = as close to the held-out frames as other real frames are).

Ranking: criterion `auto` is `ratio_to_floor` when every compared result has it: the worse of the FD
ratio in ImageNet EfficientNet-Lite0 features and the SWD ratio in pixels. A comparison that includes a
discriminator built on Lite0 must not rest on Lite0's space alone (Kynkäänniemi et al. 2023: a
distance in the features D is trained in can fall without the images getting better); SWD looks at
Laplacian-pyramid patches, which no discriminator shares, and a candidate ranks only as well as the
worse of the two. Without floors: `fd_efflite0` when every result has it, else `swd`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from medsynth.errors import ConfigError

PRETRAINED_SUFFIX = "_efflite0"
AUTO = "auto"
# `auto`'s choices, in order: the first every compared result has (finite)
AUTO_ORDER = ("ratio_to_floor", "fd_efflite0", "swd")
FLOOR_PREFIX = "floor_"
# the metrics judged for a real sample too (floor_<key>)
FLOORED = ("swd", f"fd{PRETRAINED_SUFFIX}", f"kid{PRETRAINED_SUFFIX}", f"probe_acc{PRETRAINED_SUFFIX}",
           f"precision{PRETRAINED_SUFFIX}", f"recall{PRETRAINED_SUFFIX}", f"density{PRETRAINED_SUFFIX}",
           f"coverage{PRETRAINED_SUFFIX}")
# distance → its ratio to the floor; WORST_RATIO is the larger of them
RATIOS = {f"fd{PRETRAINED_SUFFIX}": f"fd_ratio{PRETRAINED_SUFFIX}", "swd": "swd_ratio"}
WORST_RATIO = "ratio_to_floor"

# Which result key names the feature space of each kind of metric.
SPACE_KEYS = {"features": "feature_extractor", "pretrained": "pretrained_extractor"}
PIXELS = "pixels"

# Page groups, in the order a reader meets them.
GROUPS = {
    "quality": "Quality: do generated frames look like real ones?",
    "pretrained": "Pretrained features (EfficientNet-Lite0, ImageNet)",
    "diversity": "Diversity and the collapse alarm",
    "features": "Features of the configured extractor",
    "fallback": "Random-feature fallback (comparable only with the same extractor)",
    "run": "Run",
}


@dataclass(frozen=True)
class Metric:
    """One key of a result: its label, better direction ('lower', 'higher' or '' for none), space, meaning."""

    key: str
    label: str
    direction: str
    space: str  # 'pixels', 'features', 'pretrained', or '' for bookkeeping
    group: str
    meaning: str
    rankable: bool = False  # may be a comparison criterion or gate metric

    @property
    def arrow(self) -> str:
        return {"lower": "↓", "higher": "↑"}.get(self.direction, "")


def _feature_metrics(suffix: str, space: str, group: str, name: str) -> list[Metric]:
    """fd/kid/precision/recall/density/coverage of one feature space (the two spaces share meanings)."""
    fd = "fid" if not suffix else f"fd{suffix}"
    tag = f" ({name})" if name else ""  # the pretrained ones say so in their label too
    return [
        Metric(fd, f"FD{tag}" if suffix else "FID", "lower", space, group,
               "Fréchet distance between Gaussians fitted to real and generated features; 0 = same", True),
        Metric(f"kid{suffix}", f"KID{tag}", "lower", space, group,
               "kernel (MMD²) distance of the features, unbiased; ≈0 = same distribution", True),
        Metric(f"kid_std{suffix}", f"KID spread{tag}", "", space, group,
               "standard deviation of KID over random subsets: differences below it are noise"),
        Metric(f"precision{suffix}", f"precision{tag}", "higher", space, group,
               "share of generated frames that fall on the real frames' manifold (fidelity)", True),
        Metric(f"recall{suffix}", f"recall{tag}", "higher", space, group,
               "share of real frames that the generated frames' manifold covers (diversity)", True),
        Metric(f"density{suffix}", f"density{tag}", "higher", space, group,
               "real neighbourhoods per generated frame, ÷k; ≈1 when distributions match"),
        Metric(f"coverage{suffix}", f"coverage{tag}", "higher", space, group,
               "share of real frames with a generated frame among their nearest neighbours"),
    ]


_TABLE: list[Metric] = [
    Metric(WORST_RATIO, "worst ratio to the real floor", "lower", "pretrained", "quality",
           "the larger of FD (Lite0) ÷ its floor and SWD ÷ its floor; 1 = as close to the held-out frames "
           "as other real frames are (what ranks: two spaces, one of them no network's)", True),
    Metric(f"fd_ratio{PRETRAINED_SUFFIX}", "FD (Lite0) ÷ real floor", "lower", "pretrained", "quality",
           "FD in Lite0 features divided by the FD of real training frames against the same held-out "
           "frames", True),
    Metric("swd_ratio", "SWD ÷ real floor", "lower", PIXELS, "quality",
           "SWD divided by the SWD of real training frames against the same held-out frames", True),
    Metric("swd", "SWD ×1e3", "lower", PIXELS, "quality",
           "sliced Wasserstein distance of 7×7 Laplacian-pyramid patches (ProGAN), mean over levels", True),
    Metric(f"probe_acc{PRETRAINED_SUFFIX}", "linear-probe accuracy", "lower", "pretrained", "pretrained",
           "cross-validated accuracy of a linear classifier telling held-out real from generated "
           "frames; 0.5 = indistinguishable, 1 = always told apart", True),
    *_feature_metrics(PRETRAINED_SUFFIX, "pretrained", "pretrained", "Lite0"),
    Metric("ms_ssim_fake", "MS-SSIM generated pairs", "lower", PIXELS, "diversity",
           "mean structural similarity of random pairs of generated frames; above real = less diverse"),
    Metric("ms_ssim_real", "MS-SSIM real pairs", "", PIXELS, "diversity",
           "the same for real frames: the reference the alarm compares with"),
    Metric("dup_rate_fake", "near-duplicates generated", "lower", PIXELS, "diversity",
           "share of generated frames whose nearest other generated frame is near-identical"),
    Metric("dup_rate_real", "near-duplicates real", "", PIXELS, "diversity",
           "the same for real frames (consecutive cine frames are near-identical too)"),
    Metric("mass_rate_fake", "frames with a saturated mass", "lower", PIXELS, "diversity",
           "share of generated frames with a connected pure-white or pure-black region of at least 1 % "
           "of the frame: an artefact, not anatomy"),
    Metric("mass_rate_real", "real frames with a saturated mass", "", PIXELS, "diversity",
           "the same for the held-out real frames: the reference"),
    Metric("collapse", "collapse alarm", "", PIXELS, "diversity",
           "raised when generated frames are much more alike than real ones (see the reason)"),
    Metric("collapse_reason", "why", "", "", "diversity", "the numbers behind the alarm"),
    *_feature_metrics("", "features", "features", ""),
    Metric("feature_extractor", "feature extractor", "", "", "run",
           "feature space of FID/KID/precision/recall"),
    Metric("pretrained_extractor", "pretrained extractor", "", "", "run",
           "feature space of the *_efflite0 metrics"),
    Metric("pretrained_note", "pretrained metrics", "", "", "run",
           "why (some of) the *_efflite0 metrics are missing"),
    Metric("n_real", "real frames", "", "", "run", "held-out real frames measured"),
    Metric("n_fake", "generated frames", "", "", "run", "generated frames measured"),
    Metric("backbone", "D backbone", "", "", "run", "the discriminator's backbone"),
    Metric("step", "step", "", "", "run", "training step of the evaluated generator"),
    Metric("d_params", "D parameters", "", "", "run", "all parameters of the discriminator"),
    Metric("d_trainable_params", "D trainable", "", "", "run", "parameters the discriminator trains"),
    Metric("train_images_per_s", "img/s", "higher", "", "run", "training throughput"),
    Metric("train_wall_seconds", "wall s", "", "", "run", "training wall-clock time"),
]
METRICS: dict[str, Metric] = {m.key: m for m in _TABLE}
_SWD_LEVEL = re.compile(r"swd_level_(\d+)$")

# Metrics a model may be ranked or gated by, and which direction is better.
PRIMARY_METRICS: dict[str, str] = {m.key: m.direction for m in _TABLE if m.rankable}
CRITERIA = (AUTO, *PRIMARY_METRICS)
# Metrics whose values only mean something within one feature space.
EXTRACTOR_METRICS = frozenset(m.key for m in _TABLE if m.space == "features")
PRETRAINED_METRICS = frozenset(m.key for m in _TABLE if m.space == "pretrained")


def lookup(key: str) -> Metric | None:
    """The table's entry for a result key (per-level SWD and floor_* keys included), or None for keys it
    does not know."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith(FLOOR_PREFIX) and (base := lookup(key[len(FLOOR_PREFIX):])) is not None:
        return Metric(key, f"{base.label}, real floor", "", base.space, base.group,
                      f"real training frames against the same held-out frames: what {base.label} is "
                      "for a second real sample")
    level = _SWD_LEVEL.match(key)
    if level:
        px = level.group(1)
        return Metric(key, f"SWD ×1e3 at {px} px", "lower", PIXELS, "quality",
                      f"SWD of the pyramid level at {px} px (fine levels: texture, coarse: shape)")
    return None


def space_of(key: str, result: Mapping[str, Any]) -> str:
    """The feature space a key of `result` was computed in, as a reader should see it."""
    m = lookup(key)
    if m is None or not m.space:
        return ""
    if m.space == PIXELS:
        return "pixels"
    return str(result.get(SPACE_KEYS[m.space], "unknown"))


def page_group(key: str, result: Mapping[str, Any]) -> str:
    """Page group of a key; the configured extractor's metrics are 'fallback' when its weights are random."""
    m = lookup(key)
    if m is None:
        return "run"
    if m.group == "features" and "random" in str(result.get("feature_extractor", "")):
        return "fallback"
    return m.group


def resolve_criterion(criterion: str, results: Iterable[Mapping[str, Any]]) -> str:
    """The metric to rank `results` by: `auto` is the first of AUTO_ORDER that every result has (finite)
    — ratio_to_floor, else fd_efflite0 — and swd otherwise."""
    if criterion not in CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    if criterion != AUTO:
        return criterion
    results = list(results)
    for key in AUTO_ORDER[:-1]:
        if results and all(_finite(r.get(key)) for r in results):
            return key
    return AUTO_ORDER[-1]


def check_comparable(a: Mapping[str, Any], b: Mapping[str, Any],
                     metrics: Iterable[str] | None = None) -> None:
    """Refuse (ConfigError) to compare feature-space metrics computed in different feature spaces.

    `metrics`: the keys about to be compared (default: every key both results have). SWD and MS-SSIM
    are computed on pixels and are always comparable.
    """
    keys = set(metrics) if metrics is not None else set(a) & set(b)
    for kind, space_key in SPACE_KEYS.items():
        used = sorted(k for k in keys if (m := lookup(k)) is not None and m.space == kind)
        if not used:
            continue
        ea, eb = a.get(space_key), b.get(space_key)
        if ea is None or eb is None or ea != eb or ea == "none":
            raise ConfigError(f"cannot compare {', '.join(used)}: computed with feature extractor {ea!r} vs "
                              f"{eb!r}; evaluate both with the same extractor (same weights and input size)")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
