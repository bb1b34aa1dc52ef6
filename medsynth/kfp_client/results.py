"""Runs and schedules as the CLI and callers need them, whatever kfp's generated models carry."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})


@dataclass(frozen=True)
class RunInfo:
    """A pipeline run as the CLI and callers need it."""

    run_id: str
    name: str
    state: str
    url: str
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    error: str | None = None
    experiment_id: str | None = None
    tasks: tuple[tuple[str, str], ...] = ()  # (task name, state), as KFP reports them

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring run (KFP's name for a schedule)."""

    recurring_run_id: str
    name: str
    cron: str | None
    enabled: bool
    url: str
    experiment_id: str | None = None
    created_at: dt.datetime | None = None
    max_concurrency: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
