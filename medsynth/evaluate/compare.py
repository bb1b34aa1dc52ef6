"""The backbone comparison: rank short runs of every backbone by the quality of what they generate.

The paper picked Xception by ImageNet accuracy; here each backbone's run is
evaluated the same way (same data, seed and step budget) and the winner is the
one with the best measured metric: by default (`auto`) the worse of its FD (ImageNet Lite0 features)
and SWD (pixels) ratios to the real floor, when every run has them (registry.py says why).
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import ConfigError, DataError
from medsynth.evaluate.pages import (
    STYLE,
    better,
    collapse_html,
    floor_sentence,
    fmt,
    img_tag,
    label,
    legend_html,
)
from medsynth.evaluate.registry import (
    AUTO,
    PRIMARY_METRICS,
    WORST_RATIO,
    check_comparable,
    lookup,
    resolve_criterion,
    space_of,
)
from medsynth.storage import atomic_write_json, atomic_write_text, read_json

# The answer first: what ranks (the worst ratio to the real floor and its two parts) and the alarm.
LEAD_COLUMNS = ["backbone", "ratio_to_floor", "fd_ratio_efflite0", "swd_ratio", "collapse", "ms_ssim_fake"]
# Then every other column, in the registry's groups, each distance beside its real floor.
DETAIL_COLUMNS = ["backbone", "fd_efflite0", "floor_fd_efflite0", "swd", "floor_swd",
                  "probe_acc_efflite0", "floor_probe_acc_efflite0", "kid_efflite0", "precision_efflite0",
                  "floor_precision_efflite0", "recall_efflite0", "floor_recall_efflite0", "dup_rate_fake",
                  "fid", "kid", "precision", "recall", "d_params", "d_trainable_params", "train_images_per_s",
                  "train_wall_seconds"]
COLUMNS = LEAD_COLUMNS + DETAIL_COLUMNS[1:]


@dataclass
class Comparison:
    winner: str
    criterion: str  # the metric actually ranked by (`auto` resolved)
    rows: list[dict[str, Any]]

    @property
    def all_collapsed(self) -> bool:
        """Every candidate raised the collapse alarm: the winner is only the least bad."""
        return all(r.get("collapse") for r in self.rows)

    @property
    def verdict(self) -> str:
        return verdict(self.rows, self.winner, self.criterion)


def verdict(rows: list[dict[str, Any]], winner: str, criterion: str) -> str:
    """The comparison in one line: the winner, by what, beside its floor; or that all collapsed."""
    best = next(r for r in rows if r["backbone"] == winner)
    value = fmt(best.get(criterion))
    floor = floor_sentence(best) if criterion == WORST_RATIO else ""
    line = f"winner {winner} by {label(criterion)} = {floor or value}"
    if all(r.get("collapse") for r in rows):
        step = best.get("step")
        at = f" at step {step}" if step is not None else ""
        line = (f"every candidate raised the collapse alarm{at} ({', '.join(r['backbone'] for r in rows)}): "
                f"{winner} is only the least bad by {label(criterion)} ({value})")
    return line


def load_results(run_root: str | Path, backbones: list[str]) -> list[dict[str, Any]]:
    rows = []
    for b in backbones:
        path = Path(run_root) / b / "eval" / "metrics.json"
        if not path.exists():
            raise DataError(f"backbone {b}: no evaluation at {path}; did its train/evaluate step run?")
        row = {**read_json(path), "backbone": b}  # the candidate's name: two may share a backbone
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


# What the pipeline does when every candidate raised the collapse alarm: `stop` (the run fails with the
# verdict line, after the pages are written: a longer comparison or other candidates are needed) or
# `continue` (the least bad goes on to the final training, whose best checkpoint without an alarm is
# exported; the push gate refuses an alarmed one).
IF_ALL_COLLAPSED = ("stop", "continue")


def compare_runs(
    run_root: str | Path, backbones: list[str], out: str | Path, criterion: str = AUTO,
    if_all_collapsed: str = "continue",
) -> Comparison:
    """Table (Markdown), bar chart and side-by-side sample grids (HTML) of every candidate's run.

    `criterion` `auto` ranks by ratio_to_floor, else fd_efflite0, else swd: the first every run has
    (registry.py).
    """
    if if_all_collapsed not in IF_ALL_COLLAPSED:
        raise ConfigError(f"unknown if_all_collapsed {if_all_collapsed!r}; choose one of "
                          f"{', '.join(IF_ALL_COLLAPSED)}")
    rows = load_results(run_root, backbones)
    requested, criterion = criterion, resolve_criterion(criterion, rows)
    winner = pick_winner(rows, criterion)
    out = Path(out)
    atomic_write_text(out / "comparison.md", markdown_table(rows, winner, criterion))
    chart = bar_chart(rows, criterion, out / "comparison.png")
    grids = {r["backbone"]: Path(run_root) / r["backbone"] / "eval" / "generated.png" for r in rows}
    atomic_write_text(out / "comparison.html",
                      comparison_html(rows, winner, criterion, chart, grids, requested=requested))
    record = {"winner": winner, "criterion": criterion, "criterion_requested": requested,
              "verdict": verdict(rows, winner, criterion),
              "all_collapsed": all(bool(r.get("collapse")) for r in rows), "rows": rows}
    atomic_write_json(out / "comparison.json", record)
    result = Comparison(winner, criterion, rows)
    if result.all_collapsed and if_all_collapsed == "stop":
        raise DataError(f"{record['verdict']}; stopping (if_all_collapsed=stop): compare longer "
                        "(compare_steps) or other candidates, or set if_all_collapsed=continue")
    return result


def markdown_table(rows: list[dict[str, Any]], winner: str, criterion: str) -> str:
    lines = [f"## Comparison — {verdict(rows, winner, criterion)}", "",
             f"Ranked by {label(criterion)} (`{criterion}`, {better(criterion)} is better); runs with a "
             "collapse alarm rank after all others.", ""]
    for title, columns in (("", LEAD_COLUMNS), ("### All metrics", DETAIL_COLUMNS)):
        keys = _columns(rows, columns)
        lines += ([title, ""] if title else []) + [
            "| " + " | ".join(_header(k) for k in keys) + " |",
            "|" + "---|" * len(keys),
        ]
        for r in rows:
            cells = [fmt(r.get(k)) for k in keys]
            if r["backbone"] == winner:
                cells[0] = f"**{cells[0]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"- {s}" for s in _spaces(rows)]
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
    """The comparison page: the verdict and what ranked, the lead table, the chart, every metric grouped
    beside its floor, alarms, legend."""
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
        f"<h2>Comparison — {html.escape(verdict(rows, winner, criterion))}</h2>"
        f"<p>Ranked by <b>{html.escape(label(criterion))}</b> (<code>{html.escape(criterion)}</code>, "
        f"{better(criterion)} is better){why}, computed in "
        f"{html.escape(space)}: {html.escape(m.meaning if m else '')}. "
        "Runs with a collapse alarm rank after all others.</p>"
        f"{_html_table(rows, winner, LEAD_COLUMNS)}"
        f"{img_tag(chart, 'chart')}"
        f"<h3>All metrics (same data, seed and step budget; each distance beside its real floor)</h3>"
        f"{_html_table(rows, winner, DETAIL_COLUMNS)}"
        f"<h3>Collapse alarm</h3>{''.join(collapse_html(r, r['backbone']) for r in rows)}"
        f"<h3>What the columns mean</h3>{legend_html(_columns(rows)[1:], rows[0] if rows else {})}"
        f"<h3>Generated samples (synthetic), same seed and step budget</h3>{figs}"
        "</body></html>"
    )


def _html_table(rows: list[dict[str, Any]], winner: str, columns: list[str]) -> str:
    keys = _columns(rows, columns)
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
    return (f"<div class='wide'><table><tr>{head}</tr><tr class='note'>{spaces}</tr>{body}</table></div>")


def _columns(rows: list[dict[str, Any]], columns: list[str] = COLUMNS) -> list[str]:
    return [k for k in columns if any(k in r for r in rows)]


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
