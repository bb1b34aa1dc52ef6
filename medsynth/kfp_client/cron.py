"""Schedules: standard cron in, KFP's 6-field cron (seconds first) out."""

from __future__ import annotations

import re

from medsynth.errors import ConfigError

# KFP parses schedules with robfig/cron v1: six fields, seconds first, and a standard 5-field
# expression is silently read as "second minute hour day month" (`0 3 * * 1` would run every
# hour of January). So 5 fields get a leading "0"; 6 fields are taken as KFP's form.
_CRON_FIELDS = [  # name, low, high, names
    ("second", 0, 59, None),
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ("day of week", 0, 6, ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]),
]


_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def to_kfp_cron(expr: str) -> str:
    """Standard cron (5 fields) → KFP's 6-field cron with seconds; 6 fields and @daily-style
    descriptors pass through after validation. Raises ConfigError naming the bad field."""
    text = " ".join(expr.split())
    low = text.lower()
    if low in _DESCRIPTORS:
        return low
    if low.startswith("@every"):
        if re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", low):
            return low
        raise ConfigError(f"--cron {expr!r}: write @every with a Go duration, e.g. '@every 6h'")
    fields = text.split(" ") if text else []
    if len(fields) == 5:
        fields = ["0", *fields]
    elif len(fields) != 6:
        raise ConfigError(
            f"--cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week, e.g. "
            f"'0 3 * * 1' = Mondays 03:00) or KFP's 6 with seconds first; got {len(fields)}"
        )
    for value, (name, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expr, value, name, lo, hi, names)
    return " ".join(fields)


def _check_cron_field(expr: str, value: str, name: str, lo: int, hi: int, names: list[str] | None) -> None:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"--cron {expr!r}: {name} field {value!r} {why}")

    def number(tok: str) -> int:
        if names and tok.upper() in names:
            return names.index(tok.upper()) + lo
        if not tok.isdigit():
            raise bad(f"has {tok!r}; allowed: {lo}-{hi}" + (f" or {names[0]}-{names[-1]}" if names else ""))
        n = int(tok)
        if name == "day of week" and n == 7:
            raise bad("uses 7 for Sunday; KFP's cron counts days of week 0-6: use 0 or SUN")
        if not lo <= n <= hi:
            raise bad(f"is out of range {lo}-{hi}")
        return n

    if value == "?" and name in ("day of month", "day of week"):
        return
    for part in value.split(","):
        rng, _, step = part.partition("/")
        if _ and (not step.isdigit() or int(step) == 0):
            raise bad("has a step that is not a positive integer")
        if rng == "*":
            continue
        a, dash, b = rng.partition("-")
        start = number(a)
        if dash and number(b) < start:
            raise bad(f"has a backwards range {rng!r}")
