"""The utility experiment's statistics, verdicts, layouts and report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medsynth.data.keypoints import TIP, FramePoints, LabelledFrames
from medsynth.utility import report
from medsynth.utility.layouts import Jitter, sample_layouts


def _results(effect: float, noise: list[float]) -> list[dict]:
    """Three seeds of a real-only arm and a synthetic arm whose tip error differs by `effect` + noise."""
    out = []
    for seed, e in enumerate(noise):
        base = 5.0 + seed
        out.append(
            {
                "n_real": 64,
                "n_synthetic": 0,
                "seed": seed,
                "metrics": {"val_tip_error_mean_px": base, "val_bif_f1": 0.5},
            }
        )
        out.append(
            {
                "n_real": 64,
                "n_synthetic": 1000,
                "seed": seed,
                "metrics": {"val_tip_error_mean_px": base + effect + e, "val_bif_f1": 0.5 + e},
            }
        )
    return out


def test_spread_matches_the_t_interval() -> None:
    s = report.spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["lo"] == 1.0 and s["hi"] == 3.0
    assert s["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    one = report.spread([4.0])
    assert one["mean"] == 4.0 and math.isnan(one["ci95"])


def test_paired_difference_decides_the_verdict() -> None:
    worse = report.summarise(_results(+2.0, [0.1, -0.1, 0.0]))
    row = next(r for r in worse if r["n_synthetic"] == 1000)
    assert row["val_tip_error_mean_px_diff"]["mean"] == pytest.approx(2.0)
    assert row["val_tip_error_mean_px_verdict"] == "worse"
    assert not report.overall_verdict(worse)["not_worse"]

    better = report.summarise(_results(-2.0, [0.1, -0.1, 0.0]))
    row = next(r for r in better if r["n_synthetic"] == 1000)
    assert row["val_tip_error_mean_px_verdict"] == "better"
    assert report.overall_verdict(better)["not_worse"]

    # Seed-to-seed differences in the base error do not matter, the paired noise does.
    unclear = report.summarise(_results(0.5, [1.5, -1.5, 0.3]))
    row = next(r for r in unclear if r["n_synthetic"] == 1000)
    assert row["val_tip_error_mean_px_verdict"] == "no measurable effect"


def test_markdown_and_plot(tmp_path) -> None:
    rows = report.summarise(_results(-1.0, [0.1, -0.1, 0.0]))
    text = report.markdown(rows, ["a note"])
    assert "| 64 | 1000 | 3 |" in text and "better" in text and "- a note" in text
    path = report.plot(rows, tmp_path / "u.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _real(n: int = 8, size: int = 32) -> LabelledFrames:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        pts = rng.uniform(4, size - 5, size=(5, 2)).astype(np.float32)
        frames.append(FramePoints(pts, np.array([TIP, 1, 1, 1, 1], np.int32)))
    return LabelledFrames.from_points(np.zeros((n, size, size), np.uint8), frames)


def test_layouts_stay_in_the_frame_keep_the_tip_and_are_seeded() -> None:
    real = _real()
    p, c, m, src = sample_layouts(real, 50, seed=3)
    assert p.shape == (50, 32, 2) and np.all(src < len(real))
    assert np.all(m[:, 0]) and np.all(c[:, 0] == TIP)  # every layout has its tip, first
    inside = p[m]
    assert np.all((inside >= -0.5) & (inside <= 31.5))
    again = sample_layouts(real, 50, seed=3)
    assert np.array_equal(p, again[0]) and not np.array_equal(p, sample_layouts(real, 50, seed=4)[0])


def test_layouts_without_jitter_are_the_real_ones() -> None:
    real = _real()
    p, _, m, src = sample_layouts(real, 20, seed=0, jitter=Jitter(flip_lr=0, rotate_deg=0, scale=0, shift=0))
    for i in range(20):
        assert np.allclose(p[i][m[i]], real.frame_points(int(src[i])).points, atol=1e-4)


def test_gate_option_reads_the_verdict(tmp_path) -> None:
    from medsynth.serving.push import _utility_judgement
    from medsynth.storage import atomic_write_json

    assert _utility_judgement("") == (False, "the utility experiment is required but was not run (no report)")
    for effect, passes in ((+2.0, False), (-2.0, True)):
        rows = report.summarise(_results(effect, [0.1, -0.1, 0.0]))
        path = tmp_path / f"results{effect}.json"
        atomic_write_json(path, {"verdict": report.overall_verdict(rows)})
        ok, why = _utility_judgement(str(path))
        assert ok is passes and ("worse" in why) is (not passes)


def test_a_small_experiment_runs_resumes_and_keeps_held_out_frames_out(tmp_path, monkeypatch) -> None:
    import json

    from medsynth.cli import main
    from medsynth.data.input import load_manifest

    monkeypatch.setenv("MEDSYNTH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "u"
    argv = [
        "utility",
        "--out",
        str(out),
        "--image-size",
        "32",
        "--n-real",
        "16",
        "--n-synthetic",
        "8,24",
        "--seeds",
        "0",
        "--gan-steps",
        "2",
        "--tracker-steps",
        "2",
        "--phantom-frames",
        "512",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())
    arms = {(r["n_real"], r["n_synthetic"]) for r in summary["results"]}
    assert arms == {(16, 0), (16, 8), (16, 24)}
    assert summary["val_frames"] > 0 and "verdict" in summary
    # the generator trained on the subset of 16 labelled frames, whose train split is the parent's
    gen = json.loads((out / "n16-seed0" / "generator" / "config.json").read_text())
    subset = load_manifest(gen["data"])
    parent = load_manifest(summary["dataset"])
    assert subset["splits"]["train"]["frames"] == 16
    assert set(subset["splits"]["train"]["patients"]) <= set(parent["splits"]["train"]["patients"])
    assert not set(subset["splits"]["train"]["patients"]) & set(parent["splits"]["val"]["patients"])
    pool = np.load(out / "n16-seed0" / "synthetic.npz")
    assert pool["images"].shape == (24, 32, 32) and bool(pool["synthetic"])
    assert b"medsynth:synthetic" in (out / "synthetic.png").read_bytes()
    assert "| 16 | 24 | 1 |" in (out / "utility.md").read_text()
    # run again: every arm is kept, nothing retrains (same metrics files)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("n16-seed0/tracker-m*/metrics.json")}
    assert len(stamps) == 3 and main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_bad_lists_are_refused_with_the_flag_named(capsys) -> None:
    from medsynth.cli import main

    assert main(["utility", "--out", "x", "--n-real", "64,abc"]) == 2
    assert "--n-real takes comma-separated integers" in capsys.readouterr().err
    assert main(["utility", "--out", "x", "--synthetic-fraction", "1.5"]) == 2
    assert "--synthetic-fraction" in capsys.readouterr().err


def test_pipeline_step_reports_to_kfp_and_publishes_under_the_run(tmp_path, monkeypatch) -> None:
    import json
    from types import SimpleNamespace

    from medsynth import pipeline_steps
    from medsynth.data.prepare import PrepareConfig, prepare

    monkeypatch.setattr(pipeline_steps, "CACHE", tmp_path / "cache")
    logged: dict[str, float] = {}
    metrics = SimpleNamespace(log_metric=lambda k, v: logged.__setitem__(k, v))
    table, page = SimpleNamespace(path=str(tmp_path / "t.md")), SimpleNamespace(path=str(tmp_path / "p.html"))
    root = tmp_path / "root"
    # off: a page that says so, no report for the gate
    assert pipeline_steps.utility_step(
        "unused", str(root), "r1", 32, [16], [8], 0, 2, 2, metrics, table, page
    ) == ("",)
    assert "not requested" in Path(table.path).read_text()
    data = prepare(
        PrepareConfig(source="builtin://phantom", out=str(tmp_path / "d"), image_size=32, phantom_frames=512)
    )
    (report,) = pipeline_steps.utility_step(
        str(data), str(root), "r1", 32, [16], [8], 1, 2, 2, metrics, table, page
    )
    assert report == str(root / "runs" / "r1" / "utility" / "results.json")
    assert json.loads(Path(report).read_text())["verdict"]["text"]
    assert {"synthetic_not_worse", "n16_m8_tip_error_mean", "n16_m8_bif_f1"} <= set(logged)
    assert "| 16 | 8 | 1 |" in Path(table.path).read_text() and "<img" in Path(page.path).read_text()
