"""The utility experiment's numbers: spreads over seeds, paired differences, the verdict, a table, a plot.

Every arm (`arms.ARMS`) is trained once per (N, seed) with the same real frames, steps, batch and
seed, so an arm is compared with another on the *paired* difference of the same seed, with a
Student-t 95 % interval over the seeds ("better"/"worse" when it excludes 0). Each arm is compared
with every arm that uses no generator (`real`, `augmented`, `self-training`); the better of the two
baselines at each N (lower mean tip-error median) is marked.

The verdict is one line about N = 64 (or the N run nearest to it): a synthetic arm *wins* when it
beats both `real` and `self-training` — measurably better on tip-error median or bifurcation F1, and
measurably worse on no metric; else the line names the synthetic arm that came closest and by how
much. The push gate's `overall_verdict` asks something else, over every N: did a synthetic arm make
the tracker measurably worse than real frames alone?
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medsynth.utility.arms import ARMS, BASELINES, GENERATOR_ARMS, REFERENCE, RIVAL

# The tracker's metrics the report shows: key, label, True when lower is better.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("val_tip_error_median_px", "tip error median (px)", True),
    ("val_tip_error_mean_px", "tip error mean (px)", True),
    ("val_tip_pck2", "PCK@2%", False),
    ("val_tip_pck5", "PCK@5%", False),
    ("val_bif_f1", "bifurcation F1", False),
)
LABEL = {k: label for k, label, _ in METRICS}
LOWER_IS_BETTER = {k: low for k, _, low in METRICS}
# The two questions: is the tip found, are branchings. A win must improve one of them.
VERDICT_METRICS = ("val_tip_error_median_px", "val_bif_f1")
VERDICT_N = 64
REFERENCES = (REFERENCE, *BASELINES)  # the arms without a generator: every arm is compared with them


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


def _value(metrics: dict[str, Any], key: str) -> float:
    v = metrics.get(key)
    return math.nan if v is None else float(v)


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (N, arm) from the per-seed results ({n_real, arm, seed, metrics}), in ARMS order.

    A row holds each metric's spread over seeds, and under `vs` the paired difference (this arm minus
    the other, same seed) to each arm without a generator and its verdict; `best_baseline` is the
    better of `augmented` and `self-training` at that N (lower mean tip-error median), when run.
    """
    by: dict[tuple[int, str], dict[int, dict[str, Any]]] = {}
    for r in results:
        by.setdefault((int(r["n_real"]), str(r["arm"])), {})[int(r["seed"])] = r["metrics"]
    rows = []
    for n in sorted({n for n, _ in by}):
        for arm in [a for a in ARMS if (n, a) in by]:
            own = by[(n, arm)]
            row: dict[str, Any] = {"n_real": n, "arm": arm, "seeds": sorted(own), "vs": {}}
            row["metrics"] = {k: spread([_value(own[s], k) for s in sorted(own)]) for k, _, _ in METRICS}
            for ref in REFERENCES:
                if ref == arm or (n, ref) not in by:
                    continue
                other = by[(n, ref)]
                paired = sorted(set(own) & set(other))
                row["vs"][ref] = {}
                for key, _, low in METRICS:
                    diff = spread([_value(own[s], key) - _value(other[s], key) for s in paired])
                    row["vs"][ref][key] = {"diff": diff, "verdict": verdict(diff, low)}
            rows.append(row)
    for n in {r["n_real"] for r in rows}:
        best = _best_baseline([r for r in rows if r["n_real"] == n])
        for r in rows:
            if r["n_real"] == n:
                r["best_baseline"] = best
    return rows


def _best_baseline(rows: list[dict[str, Any]]) -> str | None:
    """The baseline arm (no generator) with the lower mean tip-error median among `rows` (one N)."""
    scored = [
        (r["metrics"]["val_tip_error_median_px"]["mean"], r["arm"])
        for r in rows
        if r["arm"] in BASELINES and not math.isnan(r["metrics"]["val_tip_error_median_px"]["mean"])
    ]
    return min(scored)[1] if scored else None


def beats(row: dict[str, Any], ref: str) -> bool:
    """`row`'s arm measurably better than `ref` on a verdict metric and measurably worse on none."""
    versus = row["vs"].get(ref)
    if not versus:
        return False
    better = any(versus[k]["verdict"] == "better" for k in VERDICT_METRICS)
    return better and not any(v["verdict"] == "worse" for v in versus.values())


def _improvement(cell: dict[str, Any], key: str) -> float:
    """The paired difference's mean, signed so that positive is better (-inf when unknown)."""
    mean = cell["diff"]["mean"]
    return -math.inf if math.isnan(mean) else (-mean if LOWER_IS_BETTER[key] else mean)


def _gain(cell: dict[str, Any], key: str) -> float:
    """How far a paired difference is from proving an improvement: the improvement over the half-width
    of its interval (>= 1: the interval excludes 0); without an interval, only its sign counts."""
    gain, half = _improvement(cell, key), cell["diff"]["ci95"]
    if math.isinf(gain) or math.isnan(half) or half <= 0:
        return math.copysign(math.inf, gain) if gain else 0.0
    return gain / half


def judge(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict at N = 64 (or the N run nearest to it): the winning synthetic arm, or the closest.

    Closest: the synthetic arm whose weaker comparison (against `real` or `self-training`) is nearest
    to a proven gain on its better verdict metric (the improvement over its interval's half-width);
    ties (too few seeds for intervals) go to the smaller loss in tip-error median.
    """
    ns = sorted({r["n_real"] for r in rows})
    if not ns:
        return {"n": None, "winner": None, "closest": None, "line": "verdict: nothing was run"}
    n = min(ns, key=lambda v: (abs(v - VERDICT_N), v))
    here = [r for r in rows if r["n_real"] == n]
    refs = [a for a in (REFERENCE, RIVAL) if any(r["arm"] == a for r in here)]
    synthetic = [r for r in here if r["arm"] in GENERATOR_ARMS]
    seeds = max((len(r["seeds"]) for r in here), default=0)
    where = f"at N={n} ({seeds} seed{'s' if seeds != 1 else ''})"
    against = " and ".join("real-only" if a == REFERENCE else a for a in refs)
    if not synthetic:
        return {"n": n, "winner": None, "closest": None, "line": f"verdict: no synthetic arm was run {where}"}
    winners = [r for r in synthetic if all(beats(r, a) for a in refs)]

    def closeness(r: dict[str, Any]) -> tuple[float, float]:
        tip = VERDICT_METRICS[0]
        return (
            min(max(_gain(r["vs"][a][k], k) for k in VERDICT_METRICS) for a in refs),
            min(_improvement(r["vs"][a][tip], tip) for a in refs),
        )

    best = max(winners or synthetic, key=closeness)
    score = closeness(best)[0]
    changes = "; ".join(
        f"{LABEL[k]} Δ "
        + ", ".join(f"{_cell(best['vs'][a][k]['diff'], _digits(k), signed=True)} vs {a}" for a in refs)
        for k in VERDICT_METRICS
    )
    if winners:
        line = f"verdict: {best['arm']} beats {against} {where}: {changes}; no metric measurably worse"
    else:
        line = (
            f"verdict: no synthetic arm beats {against} {where} (a 95 % interval of a paired difference "
            f"excluding 0 on {LABEL[VERDICT_METRICS[0]]} or {LABEL[VERDICT_METRICS[1]]}, none worse); "
            f"closest: {best['arm']}, {changes}"
        )
    return {
        "n": n,
        "winner": best["arm"] if winners else None,
        "closest": best["arm"],
        "closeness": score if math.isfinite(score) else None,  # JSON has no infinity
        "references": refs,
        "line": line,
    }


def overall_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The push gate's question, over every N: did an arm with synthetic frames make the tracker
    measurably worse than real frames alone on a verdict metric (`not_worse` False), or better?"""
    judged = [r for r in rows if r["arm"] in GENERATOR_ARMS and REFERENCE in r["vs"]]

    def named(word: str) -> list[str]:
        return [
            f"N={r['n_real']} {r['arm']}: {LABEL[k]}"
            for r in judged
            for k in VERDICT_METRICS
            if r["vs"][REFERENCE][k]["verdict"] == word
        ]

    worse, better = named("worse"), named("better")
    if not judged:
        text = "no synthetic arm was run"
    elif worse and not better:
        text = "synthetic frames made the tracker worse than real frames alone (" + "; ".join(worse) + ")"
    elif better and not worse:
        text = "synthetic frames made the tracker better than real frames alone (" + "; ".join(better) + ")"
    elif better and worse:
        text = "mixed: better in " + "; ".join(better) + "; worse in " + "; ".join(worse)
    else:
        text = "no measurable effect of synthetic frames against real frames alone at this number of seeds"
    return {"worse": worse, "better": better, "not_worse": not worse, "text": text}


def _digits(key: str) -> int:
    return 2 if key.startswith("val_tip_error") else 3


def _cell(s: dict[str, float], digits: int, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if s["n"] == 0 or math.isnan(s["mean"]):
        return "–"
    if s["n"] == 1 or math.isnan(s["ci95"]):
        return f"{s['mean']:{sign}.{digits}f}"
    return f"{s['mean']:{sign}.{digits}f} ± {s['ci95']:.{digits}f}"


def markdown(
    rows: list[dict[str, Any]], notes: Sequence[str] = (), picture: str | None = None
) -> str:
    """The report: the verdict line, then per N the arms' metrics (mean ± 95 % interval over seeds)
    and every arm's paired change against each arm without a generator; `picture` (a file beside
    the report) shows the judged arm's synthetic frames."""
    judgement = judge(rows)
    lines = [
        "# Utility: do a generator's synthetic frames help a key-point tracker?",
        "",
        f"Arms: {', '.join(a for a in ARMS if any(r['arm'] == a for r in rows))} (same real frames, "
        "tracker steps, batch and seed in each).",
        "",
        judgement["line"],
        "",
        f"Push gate (`require_utility`): {overall_verdict(rows)['text']}.",
    ]
    for n in sorted({r["n_real"] for r in rows}):
        here = [r for r in rows if r["n_real"] == n]
        seeds = max(len(r["seeds"]) for r in here)
        head = ["arm", "seeds"] + [label for _, label, _ in METRICS]
        lines += ["", f"## N = {n} real labelled frames", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in here:
            cells = [r["arm"], str(len(r["seeds"]))]
            cells += [_cell(r["metrics"][k], _digits(k)) for k, _, _ in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        best = here[0].get("best_baseline")
        lines += [
            "",
            f"Paired change (this arm − the other, same seed; {seeds} seeds) against each arm without a "
            f"generator; the better baseline at this N is {best or 'not run'}:",
            "",
        ]
        head = ["arm", "against"] + [f"Δ {label}" for _, label, _ in METRICS]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in here:
            for ref, versus in r["vs"].items():
                mark = f"{ref} (best baseline)" if ref == best else ref
                cells = [r["arm"], mark] + [
                    f"{_cell(versus[k]['diff'], _digits(k), signed=True)} ({versus[k]['verdict']})"
                    for k, _, _ in METRICS
                ]
                lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± half-width of the Student-t 95 % interval over seeds; negative Δ tip error and positive "
        "Δ PCK/F1 are better; better/worse: the interval of the paired difference excludes 0.",
    ]
    if picture and judgement.get("closest"):
        lines += [
            "",
            f"Synthetic frames of {judgement['closest']} at N={judgement['n']} (first seed, marked "
            "synthetic):",
            "",
            f"![synthetic frames]({picture})",
        ]
    lines += ["", *[f"- {n}" for n in notes]] if notes else []
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str | Path) -> str:
    """Tip-error median and bifurcation F1 against N, one line per arm, 95 % intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.storage import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=100, layout="constrained")
    for ax, key in zip(axes, VERDICT_METRICS, strict=True):
        for i, arm in enumerate(a for a in ARMS if any(r["arm"] == a for r in rows)):
            own = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["n_real"])
            xs = [r["n_real"] * (1.0 + 0.03 * (i - 2)) for r in own]  # side by side, not on top
            ys = [r["metrics"][key]["mean"] for r in own]
            err = [0.0 if math.isnan(r["metrics"][key]["ci95"]) else r["metrics"][key]["ci95"] for r in own]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=arm)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N real labelled frames")
        better = "lower" if LOWER_IS_BETTER[key] else "higher"
        ax.set_title(f"{LABEL[key]}, {better} is better", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("tracker on held-out real frames, per arm", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return str(path)
