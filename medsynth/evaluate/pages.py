"""The HTML pages the KFP UI shows: every metric with its direction, feature space and meaning, grouped.

A reader should not need this project's source to read a result: each value comes with ↓/↑ (which way
is better), the feature space it was computed in, and one line saying what it measures (all from
`registry.py`). The collapse alarm is shown with its reason, the linear probe as a sentence, and
generated pictures are marked synthetic. Pictures are inlined: the KFP UI shows an HTML artifact
without access to other files.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from medsynth.evaluate.registry import (
    AUTO_ORDER,
    FLOOR_PREFIX,
    GROUPS,
    METRICS,
    PRETRAINED_SUFFIX,
    RATIOS,
    WORST_RATIO,
    lookup,
    page_group,
    space_of,
)

STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:16px}figure{display:inline-block;margin:8px}"
    "table{border-collapse:collapse;margin:4px 0 16px}th,td{padding:3px 8px;border-bottom:1px solid #ddd;"
    "text-align:left;vertical-align:top}th{background:#f4f4f4}"
    "td.num{text-align:right;font-variant-numeric:tabular-nums}td.meaning{color:#555;font-size:90%}"
    "td.keep{white-space:nowrap}.wide{overflow-x:auto}.wide table{font-size:90%}"
    ".verdict{padding:8px 12px;margin:8px 0;border-radius:4px}"
    ".alarm{background:#fde2e2;border:1px solid #c44}.ok{background:#e3f4e8;border:1px solid #4a7}"
    ".note{color:#555}</style>"
)
NO_DIRECTION = "–"
# Keys shown elsewhere on the page (the verdict box), not as table rows.
_IN_VERDICT = {"collapse_reason"}


def img_tag(path: str | Path, alt: str, width: int | None = None) -> str:
    """An <img> with the PNG inlined."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"{w}>'


def fmt(v: Any) -> str:
    """A value as a reader wants it: 4 significant digits, yes/no, thousands separators."""
    if v is None:
        return NO_DIRECTION
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def better(key: str) -> str:
    """'↓ lower' / '↑ higher' for a key, or '–' when neither side is better."""
    m = lookup(key)
    if m is None or not m.direction:
        return NO_DIRECTION
    return f"{m.arrow} {m.direction}"


def label(key: str) -> str:
    m = lookup(key)
    return m.label if m is not None else key


def collapse_html(result: Mapping[str, Any], name: str = "") -> str:
    """The collapse alarm as a coloured box with its reason; empty when the result has no alarm value."""
    if "collapse" not in result:
        return ""
    raised = bool(result["collapse"])
    head = f"{html.escape(name)}: " if name else ""
    verdict = "Collapse alarm RAISED" if raised else "No collapse alarm"
    reason = html.escape(str(result.get("collapse_reason", "")))
    return (f'<div class="verdict {"alarm" if raised else "ok"}"><b>{head}{verdict}</b>'
            f"{' — ' + reason if reason else ''}</div>")


def _beside_floor(result: Mapping[str, Any]) -> str:
    """'6.47× the real floor (FD … vs … real = …×; SWD …)', or '' without floors."""
    worst = result.get(WORST_RATIO)
    if not isinstance(worst, (int, float)):
        return ""
    parts = [
        f"{label(key)} {fmt(result.get(key))} vs {fmt(result.get(FLOOR_PREFIX + key))} real = "
        f"{fmt(result.get(ratio))}×"
        for key, ratio in RATIOS.items()
    ]
    return f"{worst:.2f}× the real floor ({'; '.join(parts)})"


def floor_sentence(result: Mapping[str, Any]) -> str:
    """The ranking measure beside its real floor, as one plain-text sentence ('' without floors)."""
    head = _beside_floor(result)
    return f"{head}: 1× is as close to the held-out frames as other real frames are" if head else ""


def quality_line(result: Mapping[str, Any]) -> str:
    """An evaluation in one line for a log or a terminal: what ranks, beside its floor, and the alarm."""
    line = _beside_floor(result) or "; ".join(
        f"{label(k)} {fmt(result[k])}" for k in AUTO_ORDER[1:] if isinstance(result.get(k), (int, float))
    ) or "no quality metric"
    if result.get("collapse"):
        line += f"; collapse alarm: {result.get('collapse_reason') or 'raised'}"
    return line


def headline_html(result: Mapping[str, Any]) -> str:
    """What ranks, first: the worst ratio to the real floor and its two parts."""
    sentence = floor_sentence(result)
    return f"<p class='headline'><b>Quality: {html.escape(sentence)}.</b></p>" if sentence else ""


def probe_html(result: Mapping[str, Any]) -> str:
    """The linear probe as a sentence, or why the pretrained-feature metrics are missing."""
    acc = result.get(f"probe_acc{PRETRAINED_SUFFIX}")
    floor = result.get(f"{FLOOR_PREFIX}probe_acc{PRETRAINED_SUFFIX}")
    if isinstance(acc, (int, float)):
        beside = (f" (real training frames against the same held-out frames: {floor:.0%})"
                  if isinstance(floor, (int, float)) else "")
        return (f"<p><b>Linear probe: {acc:.0%}</b>{beside} — a linear classifier on ImageNet features "
                f"({html.escape(str(result.get('pretrained_extractor', '')))}) tells generated from held-out "
                "real frames in this share of cases; 50% means they cannot be told apart.</p>")
    note = result.get("pretrained_note")
    return f'<p class="note">{html.escape(str(note))}</p>' if note else ""


def metrics_html(result: Mapping[str, Any]) -> str:
    """Grouped tables: metric, value, better, feature space, meaning (unknown keys last, under 'Run')."""
    groups: dict[str, list[str]] = {g: [] for g in GROUPS}
    order = {k: i for i, k in enumerate(_registry_order())}
    for key in sorted(result, key=lambda k: (order.get(_base(k), len(order)), k)):
        if key not in _IN_VERDICT and not key.startswith(FLOOR_PREFIX):  # floors: a column, not rows
            groups[page_group(key, result)].append(key)
    parts = []
    for group, keys in groups.items():
        if not keys:
            continue
        rows = "".join(
            f"<tr><td>{html.escape(label(k))}<br><small><code>{html.escape(k)}</code></small></td>"
            f'<td class="num">{html.escape(fmt(result[k]))}</td>'
            f'<td class="num">{html.escape(fmt(result.get(FLOOR_PREFIX + k)))}</td>'
            f'<td class="keep">{better(k)}</td>'
            f'<td class="keep">{html.escape(space_of(k, result) or NO_DIRECTION)}</td>'
            f'<td class="meaning">{html.escape(m.meaning if (m := lookup(k)) else "")}</td></tr>'
            for k in keys
        )
        parts.append(f"<h3>{html.escape(GROUPS[group])}</h3><table><tr><th>metric</th><th>value</th>"
                     "<th>real floor</th><th>better</th><th>feature space</th><th>meaning</th></tr>"
                     f"{rows}</table>")
    return "".join(parts)


def legend_html(keys: Iterable[str], result: Mapping[str, Any]) -> str:
    """What each column of a comparison means: better direction, feature space, one line."""
    rows = "".join(
        f'<tr><td>{html.escape(label(k))}</td><td class="keep">{better(k)}</td>'
        f'<td class="keep">{html.escape(space_of(k, result) or NO_DIRECTION)}</td>'
        f'<td class="meaning">{html.escape(m.meaning if (m := lookup(k)) else "")}</td></tr>'
        for k in keys
    )
    return ("<table><tr><th>column</th><th>better</th><th>feature space</th><th>meaning</th></tr>"
            f"{rows}</table>")


def report_html(title: str, metrics: Mapping[str, Any], pictures: Mapping[str, str | Path],
                synthetic: Collection[str] = ("generated", "samples")) -> str:
    """One run's page: verdicts first, then pictures, then the grouped metric tables.

    `synthetic`: names of the pictures that show generated frames (their captions say so).
    """
    figs = "".join(
        f"<figure>{img_tag(p, name, 384)}<figcaption>{html.escape(name)}"
        f"{' — synthetic' if name in synthetic else ''}</figcaption></figure>"
        for name, p in pictures.items()
    )
    note = ("<p class='note'>Generated frames are synthetic: grids of them carry a SYNTHETIC mark.</p>"
            if any(name in synthetic for name in pictures) else "")
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}</head>"
        f"<body><h2>{html.escape(title)}</h2>{headline_html(metrics)}{collapse_html(metrics)}"
        f"{probe_html(metrics)}{note}{figs}"
        f"{metrics_html(metrics)}</body></html>"
    )


def _registry_order() -> list[str]:
    return ["swd", "swd_level_", *[k for k in METRICS if k != "swd"]]


def _base(key: str) -> str:
    return "swd_level_" if key.startswith("swd_level_") else key
