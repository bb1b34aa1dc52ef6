"""The progress bar long work shows."""

from __future__ import annotations

import io

from medsynth.progress import Progress


def test_progress_shows_rate_and_eta_and_ends_once():
    out = io.StringIO()
    with Progress(4, "work", unit="img", stream=out, interval=0) as bar:
        for _ in range(4):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("work:  25%") and "img/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("work: 100%") and sum("100%" in line for line in lines) == 1
