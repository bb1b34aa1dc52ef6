"""A small progress bar for long work: rate and ETA on a TTY, periodic lines in logs (KFP, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Counts work done; `update()` is cheap, the bar redraws at most every `interval` seconds."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        stream: TextIO | None = None,
        interval: float | None = None,
        initial: int = 0,
    ) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (0.2 if self.tty else 10.0)
        self.n = self.start_n = initial
        self.start = time.monotonic()
        self._last = 0.0
        self._drawn_n: int | None = None
        self.postfix = ""

    def update(self, k: int = 1, postfix: str | None = None) -> None:
        self.n += k
        if postfix is not None:
            self.postfix = postfix
        now = time.monotonic()
        if now - self._last >= self.interval or (self.total is not None and self.n >= self.total):
            self._last = now
            self._draw(now)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.start
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def _draw(self, now: float) -> None:
        self._drawn_n = self.n
        rate = self.rate()
        if self.total:
            frac = min(1.0, self.n / self.total)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            bar = "#" * int(frac * 24)
            line = (
                f"{self.desc}: {frac:4.0%} [{bar:<24}] {self.n}/{self.total} "
                f"{rate:.1f} {self.unit}/s ETA {_fmt(eta)}"
            )
        else:
            line = f"{self.desc}: {self.n} {self.unit} {rate:.1f} {self.unit}/s"
        if self.postfix:
            line += f" {self.postfix}"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn_n != self.n:  # the last state is not on screen yet
            self._draw(time.monotonic())
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
