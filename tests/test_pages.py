"""The pages a reader sees (run report, backbone comparison), rendered in headless Chromium, and the chart."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medsynth.evaluate.compare import bar_chart_figure, compare_runs
from medsynth.evaluate.pages import report_html
from medsynth.pictures import save_grid

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; .ci/run does)")

REASON = "generated pairs MS-SSIM 0.41 ≥ real 0.13 + margin 0.10"
RANDOM, LITE0 = "inceptionv3-random-s0-75px", "efflite0-imagenet-224px"


def evaluation(**overrides) -> dict:
    """The keys compute_metrics writes (test_metrics checks that contract), with plausible values."""
    m = {"swd": 61.2, "swd_level_32": 70.1, "swd_level_16": 52.3,
         "fid": 0.41, "kid": 0.002, "kid_std": 0.0004, "precision": 0.6, "recall": 0.3, "density": 0.7,
         "coverage": 0.5, "feature_extractor": RANDOM,
         "fd_efflite0": 88.5, "kid_efflite0": 0.05, "kid_std_efflite0": 0.006, "precision_efflite0": 0.55,
         "recall_efflite0": 0.25, "density_efflite0": 0.6, "coverage_efflite0": 0.4,
         "probe_acc_efflite0": 0.73, "pretrained_extractor": LITE0,
         "ms_ssim_real": 0.13, "ms_ssim_fake": 0.41, "dup_rate_real": 0.23, "dup_rate_fake": 0.31,
         "collapse": True, "collapse_reason": REASON,
         "n_real": 64, "n_fake": 64, "step": 200, "backbone": "convnet"}
    return {**m, **overrides}


@pytest.fixture(scope="module")
def grids(tmp_path_factory) -> dict[str, Path]:
    from medsynth.data.phantom import phantom_array

    out = tmp_path_factory.mktemp("grids")
    frames = phantom_array(16, 32, seed=0)[0]
    return {"generated": Path(save_grid(255 - frames, out / "generated.png", title="convnet step 200")),
            "real": Path(save_grid(frames, out / "real.png", title="real (validation)", synthetic=False))}


# A reader's view, measured inside the browser: the rendered text (innerText: what is laid out, not hidden
# markup) and each image's decoded size (0 x 0 when it did not load).
PROBE_SCRIPT = """<script>
window.addEventListener('load', () => {
  const seen = document.createElement('pre'); seen.id = 'seen';
  seen.textContent = JSON.stringify({text: document.body.innerText,
    images: [...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight])});
  document.body.appendChild(seen);
});
</script>"""


def chromium(page: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def read_in_browser(page_html: str, tmp: Path) -> tuple[str, list[tuple[str, int, int]], np.ndarray]:
    """(rendered text, [(alt, natural width, natural height)], screenshot as grey pixels) of a page."""
    from PIL import Image

    page = tmp / "page.html"
    page.write_text(page_html.replace("</body>", PROBE_SCRIPT + "</body>"), encoding="utf-8")
    dom = chromium(page, tmp, "--dump-dom").stdout
    found = re.search(r'<pre id="seen">(.*?)</pre>', dom, re.S)
    assert found, f"the probe script did not run; DOM starts {dom[:300]!r}"
    seen = json.loads(html.unescape(found.group(1)))
    shot = tmp / "page.png"
    chromium(page, tmp, f"--screenshot={shot}", "--window-size=1200,1600", "--hide-scrollbars")
    return seen["text"], [tuple(i) for i in seen["images"]], np.asarray(Image.open(shot).convert("L"))


def assert_not_blank(shot: np.ndarray) -> None:
    assert shot.std() > 10 and (shot < 200).mean() > 0.01, "the screenshot is (nearly) blank"


@needs_chromium
def test_report_page_reads_with_directions_spaces_groups_and_the_alarm(tmp_path, grids):
    judged = evaluation(floor_fd_efflite0=31.5, floor_swd=26.2, fd_ratio_efflite0=2.81, swd_ratio=2.34,
                        ratio_to_floor=2.81)
    text, images, shot = read_in_browser(report_html("convnet at step 200", judged, grids), tmp_path)
    assert_not_blank(shot)
    assert sorted(a for a, w, h in images if w > 0 and h > 0) == ["generated", "real"]  # both pictures loaded
    assert f"Collapse alarm RAISED — {REASON}" in text
    assert "Linear probe: 73%" in text and "50% means they cannot be told apart" in text
    assert "generated — synthetic" in text and "real — synthetic" not in text
    headings = ["Quality", "Pretrained features (EfficientNet-Lite0, ImageNet)",
                "Diversity and the collapse alarm", "Random-feature fallback", "Run"]
    at = [text.index(h) for h in headings]
    assert at == sorted(at), "groups out of order"
    # the report leads with quality against the real floor, before the alarm and the tables
    assert text.index("Quality: 2.81× the real floor (FD (Lite0) 88.5 vs 31.5 real = 2.81×") < text.index(
        "Collapse alarm RAISED")
    # A metric's row reads "label", then "key <tab> value <tab> real floor <tab> better <tab> feature space
    # <tab> meaning"; the floor is a column beside its metric, not a row of its own.
    lines = [line.split("\t") for line in text.splitlines()]
    row = {cells[0]: cells[1:] for cells in lines if len(cells) > 1}
    assert row["fd_efflite0"][:4] == ["88.5", "31.5", "↓ lower", LITE0]
    assert row["swd"][:4] == ["61.2", "26.2", "↓ lower", "pixels"]
    assert row["recall_efflite0"][:4] == ["0.25", "–", "↑ higher", LITE0]
    assert row["probe_acc_efflite0"][:4] == ["0.73", "–", "↓ lower", LITE0]
    assert row["fid"][:4] == ["0.41", "–", "↓ lower", RANDOM]
    assert row["precision"][:4] == ["0.6", "–", "↑ higher", RANDOM]
    assert row["ms_ssim_real"][2] == "–"  # a reference, better neither way
    assert "floor_fd_efflite0" not in row
    assert all(len(cells) == 5 and cells[4] for cells in row.values()), "a row without its meaning"
    assert text.index("fd_efflite0") > text.index("Pretrained features") > text.index("swd")
    assert text.index("precision\t") > text.index("Random-feature fallback")


@needs_chromium
def test_comparison_page_reads_with_the_criterion_columns_and_every_alarm(tmp_path, grids):
    for b, fd, collapse in [("resnet50", 90.0, False), ("efficientnet_lite0", 60.0, False),
                            ("mobilenetv2", 20.0, True)]:
        (tmp_path / b / "eval").mkdir(parents=True)
        reason = REASON if collapse else "no collapse: generated pairs MS-SSIM 0.12 < real 0.13 + margin 0.10"
        (tmp_path / b / "eval" / "metrics.json").write_text(json.dumps(
            evaluation(fd_efflite0=fd, collapse=collapse, collapse_reason=reason, backbone=b)))
        shutil.copy(grids["generated"], tmp_path / b / "eval" / "generated.png")
    result = compare_runs(tmp_path, ["resnet50", "efficientnet_lite0", "mobilenetv2"], tmp_path / "cmp")
    assert (result.winner, result.criterion) == ("efficientnet_lite0", "fd_efflite0")  # collapsed ranks last
    page = (tmp_path / "cmp" / "comparison.html").read_text()
    text, images, shot = read_in_browser(page, tmp_path)
    assert_not_blank(shot)
    assert len(images) == 4 and all(w > 0 and h > 0 for _, w, h in images)  # chart and three sample grids
    assert "winner efficientnet_lite0 by FD (Lite0)" in text
    assert "(fd_efflite0, ↓ lower is better) (auto: fd_efflite0 is what every run has)" in text
    assert f"computed in {LITE0}" in text
    lead, header = (line.split("\t") for line in text.splitlines() if line.startswith("backbone\t"))
    assert "collapse alarm" in lead and "FD (Lite0) ↓" not in lead  # the answer first, details below
    wanted = {"SWD ×1e3 ↓", "FD (Lite0) ↓", "linear-probe accuracy ↓", "recall ↑"}
    assert wanted <= set(header)
    spaces = next(line for line in text.splitlines() if LITE0 in line and RANDOM in line).split("\t")
    assert spaces[header.index("FD (Lite0) ↓")] == LITE0 and spaces[header.index("FID ↓")] == RANDOM
    assert f"mobilenetv2: Collapse alarm RAISED — {REASON}" in text
    assert "resnet50: No collapse alarm — no collapse: generated pairs MS-SSIM 0.12" in text
    assert "efficientnet_lite0 (winner) — synthetic" in text


@pytest.mark.parametrize("n", [1, 3, 8])
@pytest.mark.parametrize("criterion", ["swd", "probe_acc_efflite0", "precision_efflite0"])
def test_bar_chart_texts_lie_inside_the_figure(n, criterion):
    import matplotlib.pyplot as plt

    rows = [{"backbone": f"inception_resnet_v2_{i}", criterion: 1.0 + i, "collapse": i == 0}
            for i in range(n)]
    fig = bar_chart_figure(rows, criterion)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        assert "red bars: collapse alarm" in ax.get_title()
        for t in [ax.title, ax.yaxis.label, *ax.get_xticklabels()]:
            box = t.get_window_extent(renderer)
            inside = box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
            assert inside, f"{t.get_text()!r} at {box} is cut by the figure's edge {fig.bbox}"
    finally:
        plt.close(fig)
