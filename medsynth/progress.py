"""The progress bar long work shows: tqdm's, redrawn in place on a TTY, whole lines in logs (KFP, CI);
and the one line a pipeline step ends with, saying what it made."""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

from tqdm import tqdm

from medsynth.errors import ConfigError

INTERVAL_ENV = "MEDSYNTH_PROGRESS_INTERVAL"  # seconds between a log's progress lines (default 10)
RESULT_PREFIX = "result: "


def report_result(text: str) -> None:
    """Log a step's one-line result ("3,072 frames: …", "winner …"); the demo shows it beside the task."""
    logging.getLogger("medsynth").info("%s%s", RESULT_PREFIX, " ".join(text.split()))


def _log_interval() -> float:
    value = os.environ.get(INTERVAL_ENV, "").strip() or "10"
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{INTERVAL_ENV}={value!r}: give seconds between progress lines, e.g. 10")
    return seconds


class Progress(tqdm):
    """Counts work done; `update()` is cheap, the bar redraws at most every `interval` seconds.

    tqdm redraws one line with carriage returns, which a log keeps as one endless line: away from a
    TTY each draw is a line of its own instead (the first update and the last state always, at most
    one every `interval` in between), and nothing is written before the first update.
    """

    monitor_interval = 0  # no monitor thread: with miniters=0 it would have nothing to adjust

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float | None = None,
        initial: int = 0,
    ) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else _log_interval())
        self._drawn_n: float | None = None
        self._started = False
        super().__init__(
            total=total, desc=desc, unit=unit, initial=initial, file=self.stream,
            mininterval=self.interval, maxinterval=0, miniters=0,  # draw on time alone, even for update(0)
            smoothing=0,  # the rate shown is the average since the start, as rate() returns
            dynamic_ncols=self.tty,
        )
        self.postfix = ""
        self._started = True
        if not self.tty:
            self.last_print_t = float("-inf")  # a log gets a line at the first update

    def update(self, n: float = 1, postfix: str | None = None) -> bool | None:
        """Add `n` done; `postfix` replaces the text after the counts (e.g. the losses, a run's state)."""
        if postfix is not None:
            self.postfix = postfix
        drawn = super().update(n)
        if not drawn and self.total is not None and self.n >= self.total and self._drawn_n != self.n:
            self.refresh()  # the end shows at once, not an interval later
            drawn = True
        return drawn

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = self._time() - self.start_t
        return (self.n - self.initial) / elapsed if elapsed > 0 else 0.0

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.tty:
            drawn = super().display(msg, pos)
        elif msg is None and self._started:
            self.fp.write(f"{self}\n")
            self.fp.flush()
            drawn = True
        else:  # tqdm clearing its line (msg ''), or its first draw, has no place in a log
            return False
        self._drawn_n = self.n
        return drawn

    def close(self) -> None:
        if not self.tty and not self.disable:
            if self._drawn_n != self.n:
                self.refresh()  # the last state, once: update() may have drawn it already
            self.leave = False  # tqdm would draw it again and end the line
        super().close()
