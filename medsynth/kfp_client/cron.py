"""Schedules: standard cron in, KFP's 6-field cron (seconds first) out.

KFP parses schedules with robfig/cron v1: six fields, seconds first, and a standard 5-field
expression is silently read as "second minute hour day month" (`0 3 * * 1` would run every
hour of January). So 5 fields get a leading "0"; 6 fields are taken as KFP's form. croniter
checks the values (seconds first, as KFP reads them); what croniter reads but robfig/cron v1
does not (7 for Sunday, ranges that wrap around, L, W, # and H) is refused here.
"""

from __future__ import annotations

import re

from croniter import CroniterError, croniter

from medsynth.errors import ConfigError

_FIELDS = ("second", "minute", "hour", "day of month", "month", "day of week")
_CRONITER_INDEX = (5, 0, 1, 2, 3, 4)  # where croniter keeps each of KFP's fields (seconds last)
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
    try:
        croniter.expand(" ".join(fields), second_at_beginning=True)
    except CroniterError:
        raise _refused(expr, fields) from None
    for i, value in enumerate(fields):
        _check_kfp_dialect(expr, i, value)
    return " ".join(fields)


def _range(i: int) -> str:
    lo, hi = croniter.RANGES[_CRONITER_INDEX[i]]
    return f"{lo}-{hi}"


def _allowed(i: int) -> str:
    names = [n.upper() for n in croniter.ALPHACONV[_CRONITER_INDEX[i]] if len(n) == 3]
    return _range(i) + (f" or {names[0]}-{names[-1]}" if names else "")


def _bad(expr: str, i: int, value: str, why: str) -> ConfigError:
    return ConfigError(f"--cron {expr!r}: {_FIELDS[i]} field {value!r} {why}")


def _refused(expr: str, fields: list[str]) -> ConfigError:
    """Name the field croniter refuses on its own (the others `*`), with its reason in our words."""
    for i, value in enumerate(fields):
        probe = ["*"] * len(fields)
        probe[i] = value
        try:
            croniter.expand(" ".join(probe), second_at_beginning=True)
        except CroniterError as e:
            if "step" in str(e):
                return _bad(expr, i, value, "has a step that is not a positive integer")
            if "out of range" in str(e) or "out of bands" in str(e):
                return _bad(expr, i, value, f"is out of range {_range(i)}")
            return _bad(expr, i, value, f"has {value!r}; allowed: {_allowed(i)}")
    return ConfigError(f"--cron {expr!r}: the fields do not fit together (croniter refuses them)")


def _check_kfp_dialect(expr: str, i: int, value: str) -> None:
    """What croniter accepts and robfig/cron v1 refuses or reads otherwise: a value is a number or a
    3-letter name, days of week count 0-6, and a range runs forwards."""
    names = croniter.ALPHACONV[_CRONITER_INDEX[i]]
    for part in value.split(","):
        rng = part.partition("/")[0]
        numbers = []
        for token in [] if rng in ("*", "?") else rng.split("-"):
            if token.isdigit():
                numbers.append(int(token))
            elif len(token) == 3 and token.lower() in names:
                numbers.append(int(names[token.lower()]))
            else:
                raise _bad(expr, i, value, f"has {token!r}: KFP's cron reads {_allowed(i)} only")
            if _FIELDS[i] == "day of week" and numbers[-1] == 7:
                raise _bad(expr, i, value,
                           "uses 7 for Sunday; KFP's cron counts days of week 0-6: use 0 or SUN")
        if len(numbers) == 2 and numbers[1] < numbers[0]:
            raise _bad(expr, i, value, f"has a backwards range {rng!r}")
