"""The backbone comparison: rank short runs of every backbone by the quality of what they generate.

The paper picked Xception by ImageNet accuracy; here each backbone's run is
evaluated the same way (same data, seed and step budget) and the winner is the
one with the best measured metric.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import ConfigError, DataError
from medsynth.evaluate.report import img_tag
from medsynth.storage import atomic_write_json, atomic_write_text, read_json

COLUMNS = [
    ("backbone", "backbone"),
    ("d_params", "D parameters"),
    ("d_trainable_params", "D trainable"),
    ("swd", "SWD ×1e3 ↓"),
    ("fid", "FID ↓"),
    ("kid", "KID ↓"),
    ("precision", "precision ↑"),
    ("recall", "recall ↑"),
    ("ms_ssim_fake", "MS-SSIM gen (diversity ↓)"),
    ("collapse", "collapse"),
    ("train_images_per_s", "img/s"),
    ("train_wall_seconds", "wall s"),
]


@dataclass
class Comparison:
    winner: str
    criterion: str
    rows: list[dict[str, Any]]


def load_results(run_root: str | Path, backbones: list[str]) -> list[dict[str, Any]]:
    rows = []
    for b in backbones:
        path = Path(run_root) / b / "eval" / "metrics.json"
        if not path.exists():
            raise DataError(f"backbone {b}: no evaluation at {path}; did its train/evaluate step run?")
        row = {"backbone": b, **read_json(path)}
        train_metrics = Path(run_root) / b / "metrics.json"
        if train_metrics.exists():
            row.update({k: v for k, v in read_json(train_metrics).items() if k.endswith("params")})
        rows.append(row)
    return rows


def pick_winner(rows: list[dict[str, Any]], criterion: str = "swd") -> str:
    """Best by `criterion` in its own direction; collapsed runs only win when every run collapsed."""
    from medsynth.evaluate.suite import PRIMARY_METRICS, check_comparable

    if criterion not in PRIMARY_METRICS:
        raise ConfigError(
            f"unknown comparison criterion {criterion!r}; choose one of {', '.join(PRIMARY_METRICS)}"
        )
    usable = [r for r in rows if isinstance(r.get(criterion), (int, float)) and math.isfinite(r[criterion])]
    if not usable:
        raise DataError(f"no run has a finite {criterion}; cannot pick a backbone")
    for r in usable[1:]:
        check_comparable(usable[0], r, [criterion])  # feature-space metrics need one extractor
    sign = 1 if PRIMARY_METRICS[criterion] == "lower" else -1
    best = min(usable, key=lambda r: (bool(r.get("collapse")), sign * r[criterion]))
    return best["backbone"]


def compare_runs(
    run_root: str | Path, backbones: list[str], out: str | Path, criterion: str = "swd"
) -> Comparison:
    """Table (Markdown), bar chart and side-by-side sample grids (HTML) of every backbone's run."""
    rows = load_results(run_root, backbones)
    winner = pick_winner(rows, criterion)
    out = Path(out)
    atomic_write_text(out / "comparison.md", markdown_table(rows, winner, criterion))
    chart = bar_chart(rows, criterion, out / "comparison.png")
    grids = {r["backbone"]: Path(run_root) / r["backbone"] / "eval" / "generated.png" for r in rows}
    atomic_write_text(out / "comparison.html", comparison_html(rows, winner, criterion, chart, grids))
    atomic_write_json(out / "comparison.json", {"winner": winner, "criterion": criterion, "rows": rows})
    return Comparison(winner, criterion, rows)


def markdown_table(rows: list[dict[str, Any]], winner: str, criterion: str) -> str:
    present = [(k, t) for k, t in COLUMNS if any(k in r for r in rows)]
    lines = [
        f"## Backbone comparison — winner: **{winner}** (by {criterion})",
        "",
        "| " + " | ".join(t for _, t in present) + " |",
        "|" + "---|" * len(present),
    ]
    for r in rows:
        cells = [_cell(r.get(k)) for k, _ in present]
        if r["backbone"] == winner:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    extractor = {r.get("feature_extractor") for r in rows} - {None}
    if extractor:
        lines += ["", f"FID/KID/precision/recall feature extractor: {', '.join(sorted(extractor))}."]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[dict[str, Any]], criterion: str, path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medsynth.storage import atomic_write_bytes

    names = [r["backbone"] for r in rows]
    values = [float(r.get(criterion, float("nan"))) for r in rows]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(rows) + 2), 3.2), dpi=100)
    ax.bar(names, values, color=["#c44" if r.get("collapse") else "#4a7" for r in rows])
    ax.set_ylabel(criterion)
    ax.set_title(f"{criterion} per discriminator backbone (red: collapse alarm)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def comparison_html(
    rows: list[dict[str, Any]], winner: str, criterion: str, chart: Path, grids: dict[str, Path]
) -> str:
    figs = "".join(
        f"<figure>{img_tag(p, b, 256)}<figcaption>{html.escape(b)}{' (winner)' if b == winner else ''}"
        "</figcaption></figure>"
        for b, p in grids.items()
        if p.exists()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>backbone comparison</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;margin:6px}</style></head><body>"
        f"<h2>Backbone comparison — winner {html.escape(winner)} by {html.escape(criterion)}</h2>"
        f"{img_tag(chart, 'chart')}<h3>Generated samples (synthetic), same seed and step budget</h3>{figs}"
        "</body></html>"
    )


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
