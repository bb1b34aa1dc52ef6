"""The progress bar long work shows."""

from __future__ import annotations

import io
import re
import time

from medsynth.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_shows_rate_and_eta_and_ends_once(capsys):
    out = io.StringIO()
    with Progress(4, "work", unit="img", stream=out, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = out.getvalue().splitlines()
    # tqdm's format: `[elapsed<remaining, rate]`, the remaining time being the ETA
    assert lines[0].startswith("work:  25%") and "img/s" in lines[0]
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", lines[0])
    assert lines[-1].startswith("work: 100%") and sum("100%" in line for line in lines) == 1
    assert "\r" not in out.getvalue()  # a log gets whole lines
    assert capsys.readouterr() == ("", "")  # only the given stream


def test_a_log_gets_the_first_update_and_the_last_state_and_nothing_else(capsys):
    out = io.StringIO()
    bar = Progress(None, "run r", unit="task", stream=out)  # the default interval in a log: 10 s
    assert out.getvalue() == ""
    bar.update(0, postfix="PENDING")
    for _ in range(3):
        bar.update(1, postfix="RUNNING")
    bar.n, bar.postfix = 5, "SUCCEEDED"
    bar.close()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "PENDING" in lines[0]
    assert lines[1].startswith("run r: 5task") and "SUCCEEDED" in lines[1]
    assert capsys.readouterr() == ("", "")


def test_a_terminal_redraws_one_line_and_ends_it():
    out = Tty()
    with Progress(3, "train", unit="step", stream=out, interval=0) as bar:
        for _ in range(3):
            bar.update(1, postfix="d=0.69 g=0.70")
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1 and text.count("\r") >= 3
    assert "3/3" in text and "d=0.69 g=0.70" in text


def test_rate_counts_from_the_initial_value():
    bar = Progress(1000, "train", unit="step", stream=io.StringIO(), initial=500)
    time.sleep(0.05)
    bar.update(5)
    assert 5 / 1.0 < bar.rate() < 5 / 0.05 * 1.01  # 5 steps in a little over 50 ms, not 505
    bar.close()
