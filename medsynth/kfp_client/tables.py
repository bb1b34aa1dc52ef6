"""`medsynth runs` and `medsynth schedule --list`: runs and schedules as plain-text tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from tabulate import tabulate

from medsynth.kfp_client.results import RunInfo, ScheduleInfo


def runs_table(runs: Sequence[RunInfo]) -> str:
    rows = [("RUN ID", "NAME", "STATE", "CREATED (UTC)", "DURATION")]
    now = dt.datetime.now(dt.UTC)
    for r in runs:
        end = r.finished_at or (None if r.done else now)
        took = _duration((end - r.created_at).total_seconds()) if r.created_at and end else "-"
        rows.append((r.run_id, r.name, r.state, _fmt_time(r.created_at), took))
    return _table(rows)


def schedules_table(schedules: Sequence[ScheduleInfo]) -> str:
    rows = [("RECURRING RUN ID", "NAME", "CRON (KFP, with seconds)", "ENABLED", "CREATED (UTC)")]
    for s in schedules:
        rows.append((s.recurring_run_id, s.name, s.cron or "-", "yes" if s.enabled else "no",
                     _fmt_time(s.created_at)))
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    """Columns two spaces apart, left-aligned, the heading a row like the others; no line ends in spaces."""
    text = tabulate(rows, tablefmt="plain", disable_numparse=True, stralign="left")
    return "\n".join(line.rstrip() for line in text.splitlines())


def _fmt_time(t: dt.datetime | None) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M") if t else "-"


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"
