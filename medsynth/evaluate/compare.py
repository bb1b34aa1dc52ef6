"""The backbone comparison: rank short runs of every backbone by the quality of what they generate.

The paper picked Xception by ImageNet accuracy; here each backbone's run is
evaluated the same way (same data, seed and step budget) and the winner is the
one with the best measured metric: by default (`auto`) the Fréchet distance on
pretrained ImageNet features when every run has it, else SWD (registry.py).
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import DataError
from medsynth.evaluate.pages import STYLE, better, collapse_html, fmt, img_tag, label, legend_html
from medsynth.evaluate.registry import (
    AUTO,
    PRIMARY_METRICS,
    check_comparable,
    lookup,
    resolve_criterion,
    space_of,
)
from medsynth.storage import atomic_write_json, atomic_write_text, read_json

# Columns of the comparison, in the registry's groups: ranking metrics, diversity, fallback, cost.
COLUMNS = ["backbone", "swd", "probe_acc_efflite0", "fd_efflite0", "kid_efflite0", "precision_efflite0",
           "recall_efflite0", "ms_ssim_fake", "dup_rate_fake", "collapse", "fid", "kid", "precision",
           "recall", "d_params", "d_trainable_params", "train_images_per_s", "train_wall_seconds"]


@dataclass
class Comparison:
    winner: str
    criterion: str  # the metric actually ranked by (`auto` resolved)
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


def best_row(rows: list[dict[str, Any]], criterion: str = AUTO) -> dict[str, Any]:
    """Best evaluation by `criterion` in its own direction; a collapsed one only wins when every one
    collapsed. Ranks backbones here and the final run's checkpoints in evaluate.report."""
    criterion = resolve_criterion(criterion, rows)
    usable = [r for r in rows if isinstance(r.get(criterion), (int, float)) and math.isfinite(r[criterion])]
    if not usable:
        raise DataError(f"no evaluation has a finite {criterion}; cannot pick the best")
    for r in usable[1:]:
        check_comparable(usable[0], r, [criterion])  # feature-space metrics need one extractor
    sign = 1 if PRIMARY_METRICS[criterion] == "lower" else -1
    return min(usable, key=lambda r: (bool(r.get("collapse")), sign * r[criterion]))


def pick_winner(rows: list[dict[str, Any]], criterion: str = AUTO) -> str:
    return best_row(rows, criterion)["backbone"]


def compare_runs(
    run_root: str | Path, backbones: list[str], out: str | Path, criterion: str = AUTO
) -> Comparison:
    """Table (Markdown), bar chart and side-by-side sample grids (HTML) of every backbone's run.

    `criterion` `auto` ranks by fd_efflite0 when every run has it, else by swd (registry.py).
    """
    rows = load_results(run_root, backbones)
    requested, criterion = criterion, resolve_criterion(criterion, rows)
    winner = pick_winner(rows, criterion)
    out = Path(out)
    atomic_write_text(out / "comparison.md", markdown_table(rows, winner, criterion))
    chart = bar_chart(rows, criterion, out / "comparison.png")
    grids = {r["backbone"]: Path(run_root) / r["backbone"] / "eval" / "generated.png" for r in rows}
    atomic_write_text(out / "comparison.html",
                      comparison_html(rows, winner, criterion, chart, grids, requested=requested))
    record = {"winner": winner, "criterion": criterion, "criterion_requested": requested, "rows": rows}
    atomic_write_json(out / "comparison.json", record)
    return Comparison(winner, criterion, rows)


def markdown_table(rows: list[dict[str, Any]], winner: str, criterion: str) -> str:
    keys = _columns(rows)
    lines = [
        f"## Backbone comparison — winner: **{winner}** (by {criterion}, {better(criterion)} is better)",
        "",
        "| " + " | ".join(_header(k) for k in keys) + " |",
        "|" + "---|" * len(keys),
    ]
    for r in rows:
        cells = [fmt(r.get(k)) for k in keys]
        if r["backbone"] == winner:
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *[f"- {s}" for s in _spaces(rows)]]
    lines += [f"- {r['backbone']}: {r['collapse_reason']}" for r in rows if r.get("collapse_reason")]
    return "\n".join(lines) + "\n"


def bar_chart_figure(rows: list[dict[str, Any]], criterion: str):  # noqa: ANN201 (matplotlib Figure)
    """The criterion per backbone, collapsed runs in red; every text inside the figure (a test checks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["backbone"] for r in rows]
    values = [float(r.get(criterion, float("nan"))) for r in rows]
    width = max(5.0, 0.9 * len(rows) + 2)
    fig, ax = plt.subplots(figsize=(width, 3.4), dpi=100, layout="constrained")
    ax.bar(names, values, color=["#c44" if r.get("collapse") else "#4a7" for r in rows])
    ax.set_ylabel(f"{criterion} ({better(criterion)})")
    # A title wider than the figure is cut at its edges (constrained layout does not shrink it): wrap it
    # at the characters that fit (10-pt glyphs are ~0.6 x 10 pt wide) and keep the legend on its own line.
    title = textwrap.fill(f"{label(criterion)} per D backbone ({better(criterion)} is better)",
                          int(width * 72 / 6.5))
    ax.set_title(f"{title}\nred bars: collapse alarm", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    return fig


def bar_chart(rows: list[dict[str, Any]], criterion: str, path: Path) -> Path:
    import io

    import matplotlib.pyplot as plt

    from medsynth.storage import atomic_write_bytes

    fig = bar_chart_figure(rows, criterion)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def comparison_html(rows: list[dict[str, Any]], winner: str, criterion: str, chart: Path,
                    grids: dict[str, Path], requested: str = "") -> str:
    """The comparison page: what ranked, the chart, the table with directions and spaces, alarms, legend."""
    keys = _columns(rows)
    head = "".join(f"<th>{html.escape(_header(k))}</th>" for k in keys)
    spaces = "".join(f"<td><small>{html.escape(_space_cell(k, rows))}</small></td>" for k in keys)
    body = "".join(
        "<tr>" + "".join(
            f"<td{' class=num' if k != 'backbone' else ''}>"
            f"{'<b>' if k == 'backbone' and r['backbone'] == winner else ''}{html.escape(fmt(r.get(k)))}"
            f"{'</b> (winner)' if k == 'backbone' and r['backbone'] == winner else ''}</td>"
            for k in keys) + "</tr>"
        for r in rows
    )
    figs = "".join(
        f"<figure>{img_tag(p, b, 256)}<figcaption>{html.escape(b)}{' (winner)' if b == winner else ''}"
        " — synthetic</figcaption></figure>"
        for b, p in grids.items()
        if p.exists()
    )
    m = lookup(criterion)
    why = f" (<code>auto</code>: {html.escape(criterion)} is what every run has)" if requested == AUTO else ""
    space = space_of(criterion, rows[0]) if rows else ""
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>backbone comparison</title>"
        f"{STYLE}</head><body>"
        f"<h2>Backbone comparison — winner {html.escape(winner)} by {html.escape(label(criterion))}</h2>"
        f"<p>Ranked by <b>{html.escape(label(criterion))}</b> (<code>{html.escape(criterion)}</code>, "
        f"{better(criterion)} is better){why}, computed in "
        f"{html.escape(space)}: {html.escape(m.meaning if m else '')}. "
        "Runs with a collapse alarm rank after all others.</p>"
        f"{img_tag(chart, 'chart')}"
        f"<h3>All runs (same data, seed and step budget)</h3><div class='wide'><table><tr>{head}</tr>"
        f"<tr class='note'>{spaces}</tr>{body}</table></div>"
        f"<h3>Collapse alarm</h3>{''.join(collapse_html(r, r['backbone']) for r in rows)}"
        f"<h3>What the columns mean</h3>{legend_html(keys[1:], rows[0] if rows else {})}"
        f"<h3>Generated samples (synthetic), same seed and step budget</h3>{figs}"
        "</body></html>"
    )


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return [k for k in COLUMNS if any(k in r for r in rows)]


def _header(key: str) -> str:
    m = lookup(key)
    return f"{label(key)} {m.arrow}".strip() if m is not None and key != "backbone" else key


def _space_cell(key: str, rows: list[dict[str, Any]]) -> str:
    """Feature space of a column; several runs in different spaces are listed (and never ranked together)."""
    found = sorted({space_of(key, r) for r in rows if key in r} - {""})
    return ", ".join(found) if found else ""


def _spaces(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    named = (("pretrained_extractor", "*_efflite0"), ("feature_extractor", "FID/KID/precision/recall"))
    for key, what in named:
        found = sorted({str(r[key]) for r in rows if r.get(key)})
        if found:
            out.append(f"{what} feature space: {', '.join(found)}")
    return out
