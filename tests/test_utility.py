"""The utility experiment's statistics, verdicts, layouts and report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from medsynth.data.keypoints import TIP, FramePoints, LabelledFrames
from medsynth.errors import ConfigError, DataError
from medsynth.utility import report
from medsynth.utility.arms import ARMS, check_arms
from medsynth.utility.layouts import Jitter, sample_layouts


def _results(effects: dict[str, tuple[float, float]], noise: list[float], n: int = 64) -> list[dict]:
    """Seeds of every arm: `effects[arm]` = (change of tip-error median, change of bifurcation F1)
    against real, plus the seed's `noise` (scaled per arm); real's own level moves from seed to seed."""
    out = []
    for seed, e in enumerate(noise):
        base = {"val_tip_error_median_px": 1.0 + 0.5 * seed, "val_bif_f1": 0.5 + 0.05 * seed}
        out.append({"n_real": n, "arm": "real", "seed": seed, "metrics": dict(base)})
        for i, (arm, (tip, f1)) in enumerate(effects.items()):
            metrics = {
                "val_tip_error_median_px": base["val_tip_error_median_px"] + tip + e * (1 + 0.5 * i),
                "val_bif_f1": base["val_bif_f1"] + f1 + e * (1 + 0.5 * i) / 10,
            }
            out.append({"n_real": n, "arm": arm, "seed": seed, "metrics": metrics})
    return out


NOISE = [0.1, -0.1, 0.0, 0.05, -0.05]


def test_spread_matches_the_t_interval() -> None:
    s = report.spread([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == 1.0 and s["lo"] == 1.0 and s["hi"] == 3.0
    assert s["ci95"] == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    one = report.spread([4.0])
    assert one["mean"] == 4.0 and math.isnan(one["ci95"])


def test_paired_differences_against_each_arm_without_a_generator() -> None:
    rows = report.summarise(
        _results({"augmented": (-0.2, 0.0), "self-training": (-0.4, 0.0), "mixed": (0.5, 0.0)}, NOISE)
    )
    assert [r["arm"] for r in rows] == ["real", "augmented", "self-training", "mixed"]  # ARMS order
    mixed = next(r for r in rows if r["arm"] == "mixed")
    assert set(mixed["vs"]) == {"real", "augmented", "self-training"}
    tip = "val_tip_error_median_px"
    assert mixed["vs"]["real"][tip]["diff"]["mean"] == pytest.approx(0.5)
    assert mixed["vs"]["self-training"][tip]["diff"]["mean"] == pytest.approx(0.9)
    assert mixed["vs"]["real"][tip]["verdict"] == "worse"
    assert mixed["best_baseline"] == "self-training"  # the lower mean tip-error median of the two
    real = next(r for r in rows if r["arm"] == "real")
    assert "real" not in real["vs"] and real["vs"]["augmented"][tip]["verdict"] == "worse"  # real − augmented
    # seed-to-seed differences in the base error do not matter, the paired noise does
    unclear = report.summarise(_results({"mixed": (0.5, 0.0)}, [1.5, -1.5, 0.3]))
    assert unclear[-1]["vs"]["real"][tip]["verdict"] == "no measurable effect"


def test_verdict_names_the_winner_only_when_it_beats_real_and_self_training() -> None:
    def judged(effects: dict[str, tuple[float, float]], n: int = 64) -> dict:
        return report.judge(report.summarise(_results(effects, NOISE, n)))

    wins = judged({"augmented": (0.0, 0.0), "self-training": (-0.2, 0.0), "mixed": (-0.6, 0.0),
                   "pretrain-finetune": (-0.3, 0.0)})  # fmt: skip
    assert wins["winner"] == "mixed" and wins["n"] == 64
    assert wins["line"].startswith("verdict: mixed beats real-only and self-training at N=64 (5 seeds)")
    # better than real, not than self-training: no winner; the closest is named with its changes
    close = judged({"self-training": (-0.6, 0.0), "mixed": (-0.5, 0.01), "pretrain-finetune": (0.2, -0.02)})
    assert close["winner"] is None and close["closest"] == "mixed"
    assert close["line"].startswith("verdict: no synthetic arm beats real-only and self-training at N=64")
    assert "closest: mixed, tip error median (px) Δ -0.50 ± " in close["line"]
    assert "+0.10 ± 0.05 vs self-training" in close["line"]
    # one seed: no interval, no winner; the closest is the one that lost least tip-error median
    effects = {"self-training": (0.0, 0.0), "mixed": (1.0, 0.0), "pretrain-finetune": (0.3, 0.0)}
    one = report.judge(report.summarise(_results(effects, [0.0])))
    assert (one["winner"], one["closest"]) == (None, "pretrain-finetune") and "(1 seed)" in one["line"]
    # better on the tip, measurably worse on bifurcations: not a win
    assert judged({"self-training": (0.0, 0.0), "mixed": (-0.6, -0.1)})["winner"] is None
    # the N judged is 64, or the one run nearest to it
    mixed = [*_results({"mixed": (-0.6, 0.0)}, NOISE, n=32), *_results({"mixed": (0.6, 0.0)}, NOISE, n=256)]
    assert report.judge(report.summarise(mixed))["n"] == 32


def test_gate_verdict_is_about_synthetic_arms_against_real_at_every_n() -> None:
    worse = report.overall_verdict(report.summarise(
        _results({"augmented": (0.5, 0.0), "pretrain-finetune": (0.5, 0.0)}, NOISE, n=256)
    ))  # fmt: skip
    assert not worse["not_worse"] and worse["worse"] == ["N=256 pretrain-finetune: tip error median (px)"]
    better = report.overall_verdict(report.summarise(_results({"mixed": (0.0, 0.1)}, NOISE)))
    assert better["not_worse"] and better["better"] == ["N=64 mixed: bifurcation F1"]
    # a baseline that hurts is no reason to refuse a generator
    assert report.overall_verdict(report.summarise(_results({"augmented": (0.5, 0.0)}, NOISE)))["not_worse"]


def test_markdown_names_every_arm_and_has_one_verdict_line(tmp_path) -> None:
    effects = {"augmented": (0.0, 0.0), "self-training": (-0.1, 0.0), "mixed": (-0.6, 0.0),
               "pretrain-finetune": (0.1, 0.0), "augmented-mixed": (-0.2, 0.0)}  # fmt: skip
    rows = report.summarise(_results(effects, NOISE))
    text = report.markdown(rows, ["a note"], picture="synthetic.png")
    for arm in ARMS:
        assert f"| {arm} | 5 |" in text
    assert [line for line in text.splitlines() if line.startswith("verdict:")] == [report.judge(rows)["line"]]
    assert "| mixed | self-training (best baseline) | -0.50 ± 0.05 (better) |" in text
    assert "Arms: real, augmented, self-training, mixed, pretrain-finetune, augmented-mixed (" in text
    fewer = report.markdown(report.summarise(_results({"mixed": (0.0, 0.0)}, NOISE)))
    assert "Arms: real, mixed (" in fewer  # the arms that ran, not every arm there is
    assert "![synthetic frames](synthetic.png)" in text and "- a note" in text
    path = report.plot(rows, tmp_path / "u.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arms_are_checked() -> None:
    assert check_arms(["mixed", "real"]) == ("real", "mixed")
    with pytest.raises(ConfigError, match="unknown --arms gan; choose from real, augmented"):
        check_arms(["real", "gan"])
    with pytest.raises(ConfigError, match="must include real"):
        check_arms(["mixed"])


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
        rows = report.summarise(_results({"mixed": (effect, 0.0)}, NOISE))
        path = tmp_path / f"results{effect}.json"
        atomic_write_json(path, {"verdict": report.overall_verdict(rows)})
        ok, why = _utility_judgement(str(path))
        assert ok is passes and ("worse" in why) is (not passes)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """One small experiment, every arm (the prepared data set, its out, its command line): its out is
    where the pipeline step of run "r1" keeps its work under the cache `out.parent.parent`."""
    from medsynth.cli import main
    from medsynth.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("utility")
    data = prepare(
        PrepareConfig(source="builtin://phantom", out=str(root / "d"), image_size=32, phantom_frames=256)
    )
    out = root / "cache" / "utility" / "r1"
    argv = ["utility", "--data", str(data), "--out", str(out), "--image-size", "32", "--n-real", "16",
            "--n-synthetic", "8", "--seeds", "0", "--gan-steps", "2", "--tracker-steps", "2",
            "--pseudo-confidence", "0.05", "--publish", str(root / "bench")]  # fmt: skip
    assert main(argv) == 0
    return Path(data), out, argv


def test_every_arm_runs_resumes_and_keeps_held_out_frames_out(experiment) -> None:
    import datetime
    import json

    from medsynth.cli import main
    from medsynth.data.input import load_manifest
    from medsynth.data.subset import subset_positions

    _, out, argv = experiment
    summary = json.loads((out / "results.json").read_text())
    assert [r["arm"] for r in summary["results"]] == list(ARMS)
    assert {r["metrics"]["steps"] for r in summary["results"]} == {2}  # the same budget in every arm
    line = summary["verdict"]["line"]
    assert line.startswith("verdict: no synthetic arm beats real-only and self-training at N=16 (1 seed)")
    text = (out / "utility.md").read_text()
    assert all(f"| {arm} | 1 |" in text for arm in ARMS) and line in text
    assert b"medsynth:synthetic" in (out / "synthetic.png").read_bytes()
    bench = out.parent.parent.parent / "bench"
    stem = f"utility-32px-{datetime.date.today().isoformat()}"
    ends = (".md", ".json", ".png", "-synthetic.png")
    assert {p.name for p in bench.iterdir()} == {f"{stem}{end}" for end in ends}
    assert f"![synthetic frames]({stem}-synthetic.png)" in (bench / f"{stem}.md").read_text()
    # what each part learnt from: subset ⊂ train; unlabelled = the rest of train; val never
    cell = out / "n16-seed0"
    parent = load_manifest(summary["dataset"])
    subset = next((cell / "data" / "datasets").glob("*/*"))
    own = subset_positions(summary["dataset"], subset)
    pseudo = np.load(cell / "pseudo.npz")
    train_frames = parent["splits"]["train"]["frames"]
    assert sorted([*own, *pseudo["positions"].tolist()]) == list(range(train_frames))
    kept = summary["results"][2]["pseudo"]["kept"]
    assert pseudo["confident"].any() and kept == int(pseudo["confident"].sum())
    gan = json.loads((cell / "generator" / "config.json").read_text())
    gan_data = load_manifest(gan["data"])
    assert gan["condition"] == "keypoints" and gan["d_head"] == "projected" and gan["generator"] == "fastgan"
    assert gan_data["splits"]["train"]["frames"] == train_frames  # G saw every training frame
    assert gan_data["splits"]["val"] == parent["splits"]["val"] == load_manifest(subset)["splits"]["val"]
    tracked = json.loads((cell / "tracker-self-training" / "config.json").read_text())
    assert tracked["real_frames"] == 16 and tracked["synthetic_frames"] == kept
    assert json.loads((cell / "tracker-pretrain-finetune" / "config.json").read_text())["pretrain_steps"] == 1
    assert json.loads((cell / "tracker-augmented" / "config.json").read_text())["rotate_deg"] > 0
    both = json.loads((cell / "tracker-augmented-mixed" / "config.json").read_text())
    assert both["rotate_deg"] > 0 and both["synthetic_fraction"] == 0.5
    # run again: every arm is kept, nothing retrains
    done = [*out.glob("n16-seed0/tracker-*/metrics.json"), *out.glob("n16-seed0/generator/checkpoints/*")]
    stamps = {p: p.stat().st_mtime_ns for p in done}
    assert len([p for p in stamps if p.name == "metrics.json"]) == len(ARMS) and main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_unlabelled_frames_are_the_other_training_frames_whatever_their_labels(tmp_path) -> None:
    """The unlabelled frames' labels never count: a copy of the data set whose other training frames
    carry nonsense labels gives the same unlabelled frames, and a subset of it the same real ones."""
    from medsynth.data.input import labelled_frames, load_manifest, real_sample
    from medsynth.data.prepare import PrepareConfig, prepare
    from medsynth.data.subset import (
        subset_positions,
        unlabelled_images,
        write_labelled_subset,
        write_pseudo_labelled,
    )

    data = prepare(PrepareConfig(source="builtin://phantom", out=str(tmp_path / "d"), image_size=32,
                                 phantom_frames=96, val_fraction=0.25))  # fmt: skip
    subset = write_labelled_subset(data, 8, 3, tmp_path / "s")
    images, positions = unlabelled_images(data, subset)
    manifest = load_manifest(data)
    assert len(images) == manifest["splits"]["train"]["frames"] - 8
    train = real_sample(data, "train", n=10_000)  # every training frame, in shard order (val: none)
    np.testing.assert_array_equal(images, train.images[positions])
    assert not set(positions.tolist()) & set(subset_positions(data, subset))
    wrong = FramePoints.from_dict({"catheter_tip": [1.0, 2.0], "bifurcations": []})
    nonsense = {int(p): wrong for p in positions}
    corrupted = write_pseudo_labelled(data, subset, nonsense, tmp_path / "c")
    again = write_labelled_subset(corrupted, 8, 3, tmp_path / "s2")
    same, same_positions = unlabelled_images(corrupted, again)
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(same_positions, positions)
    a, b = labelled_frames(subset, "train"), labelled_frames(again, "train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.points, b.points)
    with pytest.raises(DataError, match="needs one"):
        write_pseudo_labelled(data, subset, dict(list(nonsense.items())[1:]), tmp_path / "c2")


def test_bad_arms_are_refused_in_one_line(capsys) -> None:
    from medsynth.cli import main

    assert main(["utility", "--out", "x", "--arms", "real,gan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "medsynth utility: error: unknown --arms gan; choose from " + ", ".join(ARMS)
    assert main(["utility", "--out", "x", "--gan-config", "paper-lite0"]) == 2
    assert "--gan-config paper-lite0" in capsys.readouterr().err


def test_bad_lists_are_refused_with_the_flag_named(capsys) -> None:
    from medsynth.cli import main

    assert main(["utility", "--out", "x", "--n-real", "64,abc"]) == 2
    assert "--n-real takes comma-separated integers" in capsys.readouterr().err
    assert main(["utility", "--out", "x", "--synthetic-fraction", "1.5"]) == 2
    assert "--synthetic-fraction" in capsys.readouterr().err


def test_pipeline_step_reports_to_kfp_and_publishes_under_the_run(experiment, tmp_path, monkeypatch) -> None:
    import json
    from types import SimpleNamespace

    from medsynth import pipeline_steps

    data, out, _ = experiment
    monkeypatch.setattr(pipeline_steps, "CACHE", out.parent.parent)  # the finished experiment: resumed
    logged: dict[str, float] = {}
    metrics = SimpleNamespace(log_metric=lambda k, v: logged.__setitem__(k, v))
    table, page = SimpleNamespace(path=str(tmp_path / "t.md")), SimpleNamespace(path=str(tmp_path / "p.html"))
    root = tmp_path / "root"
    # off: a page that says so, no report for the gate
    off = pipeline_steps.utility_step("unused", str(root), "r1", 32, [16], 8, 0, 2, 2, metrics, table, page)
    assert off == ("",)
    assert "not requested" in Path(table.path).read_text()
    args = (str(data), str(root), "r1", 32, [16], 8, 1, 2, 2, metrics, table, page)
    (report_path,) = pipeline_steps.utility_step(*args)
    assert report_path == str(root / "runs" / "r1" / "utility" / "results.json")
    verdict = json.loads(Path(report_path).read_text())["verdict"]
    assert verdict["text"] and verdict["line"].startswith("verdict:")
    keys = {f"n16_{arm.replace('-', '_')}_{m}" for arm in ARMS for m in ("tip_error_median", "bif_f1")}
    assert keys | {"synthetic_not_worse"} <= set(logged)
    assert "| pretrain-finetune | 1 |" in Path(table.path).read_text()
    assert "<img" in Path(page.path).read_text()
    # the push gate reads the published report
    from medsynth.serving.push import _utility_judgement

    assert _utility_judgement(report_path)[0] is verdict["not_worse"]
