"""The utility experiment's numbers: spreads over seeds, paired differences, a verdict, a table, a plot.

Every arm (N real frames, + M synthetic) is trained once per seed; arms of one (N, seed) share the
real frames, the generator and the tracker's initialisation, so the effect of the synthetic frames
is judged on the *paired* difference to the real-only arm of the same seed, with a Student-t 95 %
interval over the seeds. With 3 seeds that interval is wide: "no measurable effect" is a frequent,
honest verdict.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# The tracker's metrics the report shows: key, label, True when lower is better.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("val_tip_error_mean_px", "tip error mean (px)", True),
    ("val_tip_error_median_px", "tip error median (px)", True),
    ("val_tip_error_p95_px", "tip error p95 (px)", True),
    ("val_tip_pck2", "PCK@2%", False),
    ("val_tip_pck5", "PCK@5%", False),
    ("val_bif_f1", "bifurcation F1", False),
)
LOWER_IS_BETTER = {k: low for k, _, low in METRICS}
VERDICT_METRICS = (
    "val_tip_error_mean_px",
    "val_bif_f1",
)  # the two questions: is the tip found, are branchings


def t_quantile(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (two-sided 95 % interval)."""
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation, min, max and the 95 % interval half-width of the mean over seeds."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if len(x) == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "lo": math.nan, "hi": math.nan, "ci95": math.nan}
    sd = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    half = t_quantile(len(x) - 1) * sd / math.sqrt(len(x)) if len(x) > 1 else math.nan
    return {
        "n": len(x),
        "mean": float(x.mean()),
        "sd": sd,
        "lo": float(x.min()),
        "hi": float(x.max()),
        "ci95": half,
    }


def verdict(diff: dict[str, float], lower_is_better: bool) -> str:
    """better / worse when the 95 % interval of the paired difference excludes 0, else "no effect"."""
    if diff["n"] < 2 or math.isnan(diff["ci95"]):
        return "too few seeds"
    lo, hi = diff["mean"] - diff["ci95"], diff["mean"] + diff["ci95"]
    if (hi < 0) if lower_is_better else (lo > 0):
        return "better"
    if (lo > 0) if lower_is_better else (hi < 0):
        return "worse"
    return "no measurable effect"


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (N, M, arm) from the per-seed results ({n_real, n_synthetic, seed, metrics}).

    Rows with M > 0 carry the paired difference to M = 0 of the same N and seed, and its verdict.
    """
    groups: dict[tuple[int, int], dict[int, dict[str, float]]] = {}
    for r in results:
        groups.setdefault((int(r["n_real"]), int(r["n_synthetic"])), {})[int(r["seed"])] = r["metrics"]
    rows = []
    for (n, m), by_seed in sorted(groups.items()):
        row: dict[str, Any] = {"n_real": n, "n_synthetic": m, "seeds": sorted(by_seed)}
        base = groups.get((n, 0), {})
        for key, _, low in METRICS:
            row[key] = spread([by_seed[s].get(key, math.nan) for s in sorted(by_seed)])
            if m > 0:
                paired = [
                    by_seed[s].get(key, math.nan) - base[s].get(key, math.nan)
                    for s in sorted(by_seed)
                    if s in base
                ]
                row[f"{key}_diff"] = spread(paired)
                row[f"{key}_verdict"] = verdict(row[f"{key}_diff"], low)
        rows.append(row)
    return rows


def overall_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether synthetic frames helped, hurt or did nothing, per verdict metric, over all rows."""
    judged = [r for r in rows if r["n_synthetic"] > 0]
    worse = [
        f"N={r['n_real']} M={r['n_synthetic']}: {k}"
        for r in judged
        for k in VERDICT_METRICS
        if r.get(f"{k}_verdict") == "worse"
    ]
    better = [
        f"N={r['n_real']} M={r['n_synthetic']}: {k}"
        for r in judged
        for k in VERDICT_METRICS
        if r.get(f"{k}_verdict") == "better"
    ]
    if not judged:
        text = "no synthetic arm was run"
    elif worse and not better:
        text = "synthetic frames made the tracker worse (" + "; ".join(worse) + ")"
    elif better and not worse:
        text = "synthetic frames made the tracker better (" + "; ".join(better) + ")"
    elif better and worse:
        text = "mixed: better in " + "; ".join(better) + "; worse in " + "; ".join(worse)
    else:
        text = "no measurable effect of the synthetic frames at this number of seeds"
    return {"worse": worse, "better": better, "not_worse": not worse, "text": text}


def _cell(s: dict[str, float], digits: int) -> str:
    if s["n"] == 0 or math.isnan(s["mean"]):
        return "–"
    if s["n"] == 1 or math.isnan(s["ci95"]):
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['ci95']:.{digits}f}"


def markdown(rows: list[dict[str, Any]], notes: Sequence[str] = ()) -> str:
    """The table: mean ± 95 % interval over seeds per arm, and each synthetic arm's paired change."""
    head = ["N real", "M synthetic", "seeds"] + [label for _, label, _ in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["n_real"]), str(r["n_synthetic"]), str(len(r["seeds"]))]
        for key, _, _ in METRICS:
            digits = 2 if key.startswith("val_tip_error") else 3
            cell = _cell(r[key], digits)
            if r["n_synthetic"] > 0 and f"{key}_diff" in r:
                cell += f" (Δ {_cell(r[f'{key}_diff'], digits)}; {r[f'{key}_verdict']})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± half-width of the Student-t 95 % interval over seeds; Δ = paired change against the "
        "real-only tracker of the same N and seed (negative tip error and positive PCK/F1 are better).",
        f"Verdict: {overall_verdict(rows)['text']}.",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> str:
    """Tip error and bifurcation F1 against M, one line per N, 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.storage import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100, layout="constrained")
    for ax, (key, label) in zip(
        axes,
        [
            ("val_tip_error_mean_px", "tip error mean (px), lower is better"),
            ("val_bif_f1", "bifurcation F1, higher is better"),
        ],
        strict=True,
    ):
        for n in sorted({r["n_real"] for r in rows}):
            own = sorted((r for r in rows if r["n_real"] == n), key=lambda r: r["n_synthetic"])
            xs = [r["n_synthetic"] for r in own]
            ys = [r[key]["mean"] for r in own]
            err = [0.0 if math.isnan(r[key]["ci95"]) else r[key]["ci95"] for r in own]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=f"N = {n} real")
        ax.set_xlabel("M synthetic labelled frames added")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tracker on held-out real frames (synthetic frames are marked synthetic)", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
