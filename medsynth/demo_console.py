"""What `make demo` shows on a terminal: a line per pipeline task, each task's whole log in a file.

kfp.local streams everything a task prints to the terminal — its executor input, TensorFlow's
C++ logging, every progress line — about a thousand lines for a short demo, with the summary at
the very end. The console stands in for sys.stdout and sys.stderr while the pipeline runs and reads
kfp.local's own lines ("Executing task 'x'", "Task 'x' finished with status …"): each task's lines
go to `<logs>/NN-<task>.log` (and all of them to `pipeline.log`); the terminal gets a line when a
task starts and one when it ends, with its time and its one-line result (`progress.report_result`).
On a TTY the task's line is redrawn in place with its progress bar instead. A failing task prints
its last lines and the path of its log.
"""

from __future__ import annotations

import io
import re
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from medsynth.progress import RESULT_PREFIX

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_KFP = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - (?P<msg>.*)$")  # kfp.local's logging format
_START = re.compile(r"^Executing task '(?P<task>[^']+)'$")
_END = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)$")
_BAR = re.compile(r"^(?P<bar>[^|]+?:\s+\d+%\|.*)$")  # a tqdm line with a total
_RESULT = re.compile(rf"(?:^|: ){re.escape(RESULT_PREFIX)}(?P<text>.+)$")


@dataclass
class _Task:
    number: int
    title: str
    log: Path
    file: TextIO
    started: float
    bar: str = ""
    result: str = ""
    tail: deque = field(default_factory=lambda: deque(maxlen=20))


class Console(io.TextIOBase):
    """A text stream that files kfp.local's output by task and tells `terminal` what matters."""

    def __init__(
        self,
        terminal: TextIO,
        logs: Path,
        titles: dict[str, str],
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.terminal = terminal
        self.logs = Path(logs)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.titles = titles  # kfp's task name → the name the pipeline shows (its display name)
        self.tty = bool(getattr(terminal, "isatty", lambda: False)()) if tty is None else tty
        self.clock = clock
        self.all = (self.logs / "pipeline.log").open("w", encoding="utf-8")
        self.task: _Task | None = None
        self.done: list[_Task] = []
        self.failed: _Task | None = None
        self._pending = ""
        self._open_line = False  # a TTY line drawn without its newline yet

    # --- the stream -------------------------------------------------------------------------------
    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        self.all.flush()
        if self.task:
            self.task.file.flush()

    def close(self) -> None:
        if self.closed:
            return
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        super().close()  # flushes first
        if self._open_line:  # interrupted while a task's line was being redrawn: end it
            self.terminal.write("\n")
        if self.task:
            self.task.file.close()
        self.all.close()

    # --- what a line means ------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw).rstrip("\r")
        kfp = _KFP.match(line)
        start = _START.match(kfp["msg"]) if kfp else None
        if start:
            self._start(start["task"])
        self.all.write(line + "\n")
        if self.task:
            self.task.file.write(line + "\n")
        end = _END.match(kfp["msg"]) if kfp else None
        if end:
            self._end(end["status"] == "SUCCESS")
        elif self.task and not kfp:
            self._task_line(line.strip())

    def _task_line(self, text: str) -> None:
        task = self.task
        if not text:
            return
        task.tail.append(text)
        result = _RESULT.search(text)
        if result:
            task.result = result["text"]
        bar = _BAR.match(text)
        if bar and self.tty:
            task.bar = bar["bar"]
            self._draw(f"{self._head(task)} {task.bar}")

    def _start(self, name: str) -> None:
        if self.task:
            self.task.file.close()
        number = len(self.done) + 1
        title = self.titles.get(name, name)
        log = self.logs / f"{number:02d}-{title}.log"
        self.task = _Task(number, title, log, log.open("w", encoding="utf-8"), self.clock())
        self._draw(f"{self._head(self.task)} …", keep=not self.tty)

    def _end(self, ok: bool) -> None:
        task = self.task
        task.file.flush()
        took = _duration(self.clock() - task.started)
        if ok:
            self.done.append(task)
            self._draw(f"{self._head(task)} ok  {took:>6}  {task.result}".rstrip(), keep=True)
            return
        self.failed = task
        self._draw(f"{self._head(task)} FAILED after {took}; its last lines:", keep=True)
        for text in task.tail:
            self.say(f"    {text}")
        self.say(f"    whole log: {task.log}")

    # --- the terminal -----------------------------------------------------------------------------
    def _head(self, task: _Task) -> str:
        width = max([len(t) for t in self.titles.values()] + [len(task.title)])
        return f"[{task.number:>2}/{len(self.titles)}] {task.title:<{width}}"

    def _draw(self, text: str, keep: bool = False) -> None:
        """`keep`: a line of its own; else (TTY only) a line redrawn in place until the next one."""
        if self.tty:
            columns = shutil.get_terminal_size((100, 24)).columns
            shown = text if keep else text[: columns - 1]
            self.terminal.write(f"\r\x1b[K{shown}" + ("\n" if keep else ""))
            self._open_line = not keep
        elif keep:
            self.terminal.write(text + "\n")
        self.terminal.flush()

    def say(self, text: str) -> None:
        """A line of its own on the terminal (the demo's, between task lines)."""
        self._draw(text, keep=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60}m{seconds % 60:02d}s"
