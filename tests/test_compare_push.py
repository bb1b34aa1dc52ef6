"""The backbone comparison and the quality gate before serving, on planted runs of known quality."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medsynth.errors import ConfigError, DataError, ServingError
from medsynth.evaluate.compare import compare_runs, pick_winner
from medsynth.serving.push import METRICS_FILE, PushConfig, push


def _plant(root: Path, candidate: str, **metrics) -> None:
    (root / candidate / "eval").mkdir(parents=True)
    (root / candidate / "eval" / "metrics.json").write_text(json.dumps({"feature_extractor": "x", **metrics}))
    (root / candidate / "metrics.json").write_text(json.dumps({"d_params": 10, "d_trainable_params": 2}))


def test_comparison_picks_the_best_backbone_by_the_criterion(tmp_path):
    _plant(tmp_path, "resnet50", swd=30.0, precision=0.9, collapse=False)
    _plant(tmp_path, "xception", swd=12.0, precision=0.4, collapse=False)
    _plant(tmp_path, "mobilenet", swd=5.0, precision=0.1, collapse=True)  # best SWD, but collapsed
    result = compare_runs(tmp_path, ["resnet50", "xception", "mobilenet"], tmp_path / "cmp")
    assert result.winner == "xception"
    assert pick_winner(result.rows, "precision") == "resnet50"  # higher is better for precision
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "**xception**" in table and "resnet50" in table and "mobilenet" in table
    assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (tmp_path / "cmp" / "comparison.html").read_text()
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["winner"] == "xception"


def test_comparison_refuses_what_it_cannot_rank(tmp_path):
    rows = [
        {"backbone": "a", "fid": 1.0, "feature_extractor": "inception"},
        {"backbone": "b", "fid": 2.0, "feature_extractor": "random"},
    ]
    with pytest.raises(ConfigError, match="feature extractor"):
        pick_winner(rows, "fid")
    with pytest.raises(ConfigError, match="criterion"):
        pick_winner(rows, "beauty")
    _plant(tmp_path, "resnet50", swd=1.0)
    with pytest.raises(Exception, match="xception"):
        compare_runs(tmp_path, ["resnet50", "xception"], tmp_path / "cmp")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from medsynth.models.generator import build_generator
    from medsynth.serving.export import export_generator

    g = build_generator(8, latent_dim=4, width=1)
    out = tmp_path_factory.mktemp("m") / "model"
    export_generator(g, out, metadata={"image_size": 8, "latent_dim": 4, "backbone": "test"}, warmup=False)
    return out


def _metrics(tmp_path, name, **values):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps({"feature_extractor": "x", "collapse": False, **values}))
    return str(p)


def _push(saved_model, repo, metrics, **kw):
    decision_out = Path(metrics).with_suffix(".decision.json")
    d = push(
        PushConfig(
            model=str(saved_model),
            model_repository=str(repo),
            metrics=metrics,
            decision_out=str(decision_out),
            **kw,
        )
    )
    assert json.loads(decision_out.read_text())["pushed"] == d.pushed  # recorded either way
    return d


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_gate_accepts_first_and_better_refuses_worse_and_collapsed(tmp_path, saved_model):
    repo = tmp_path / "models"
    first = _push(saved_model, repo, _metrics(tmp_path, "a", swd=20.0))
    assert first.pushed and first.version == 1 and first.served_version is None
    served = _tree(repo / "generator" / "1")
    assert json.loads(served[METRICS_FILE])["swd"] == 20.0

    worse = _push(saved_model, repo, _metrics(tmp_path, "b", swd=25.0))
    assert not worse.pushed and "does not beat" in worse.summary()
    not_enough = _push(saved_model, repo, _metrics(tmp_path, "c", swd=19.5), margin=1.0)
    assert not not_enough.pushed
    collapsed = _push(saved_model, repo, _metrics(tmp_path, "d", swd=1.0, collapse=True))
    assert not collapsed.pushed and "collapse" in collapsed.summary()
    assert sorted(p.name for p in (repo / "generator").iterdir()) == ["1"]
    assert _tree(repo / "generator" / "1") == served  # the served version is untouched

    better = _push(saved_model, repo, _metrics(tmp_path, "e", swd=10.0), margin=1.0)
    assert better.pushed and better.version == 2 and better.served_version == 1
    assert (repo / "generator" / "2" / "saved_model.pb").exists()


@pytest.mark.slow
def test_gate_refuses_a_model_that_does_not_load(tmp_path, saved_model):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(saved_model, broken)
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    d = _push(broken, tmp_path / "models", _metrics(tmp_path, "a", swd=1.0))
    assert not d.pushed and "failed to load" in d.summary()
    assert not (tmp_path / "models" / "generator").exists()


def test_push_needs_a_saved_model(tmp_path):
    with pytest.raises(ServingError, match="not a SavedModel"):
        push(
            PushConfig(
                model=str(tmp_path),
                model_repository=str(tmp_path / "r"),
                metrics=_metrics(tmp_path, "a", swd=1.0),
            )
        )


LITE0 = "efflite0-imagenet-224px"


def test_comparison_ranks_by_the_pretrained_distance_when_every_run_has_it(tmp_path):
    _plant(tmp_path, "resnet50", swd=5.0, fd_efflite0=90.0, pretrained_extractor=LITE0, collapse=False)
    _plant(tmp_path, "efficientnet_lite0", swd=30.0, fd_efflite0=40.0, pretrained_extractor=LITE0,
           collapse=False)
    result = compare_runs(tmp_path, ["resnet50", "efficientnet_lite0"], tmp_path / "cmp")
    assert (result.winner, result.criterion) == ("efficientnet_lite0", "fd_efflite0")  # not the SWD winner
    record = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert (record["criterion"], record["criterion_requested"]) == ("fd_efflite0", "auto")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "(`fd_efflite0`, ↓ lower is better)" in table and "| FD (Lite0) ↓ |" in table
    assert f"*_efflite0 feature space: {LITE0}" in table
    _plant(tmp_path, "vgg16", swd=1.0, collapse=False)  # an older evaluation without pretrained features
    mixed = compare_runs(tmp_path, ["resnet50", "efficientnet_lite0", "vgg16"], tmp_path / "cmp2")
    assert (mixed.winner, mixed.criterion) == ("vgg16", "swd")


def test_comparison_refuses_pretrained_distances_of_different_spaces():
    rows = [{"backbone": "a", "fd_efflite0": 1.0, "pretrained_extractor": LITE0},
            {"backbone": "b", "fd_efflite0": 2.0, "pretrained_extractor": "efflite0-imagenet-256px"}]
    with pytest.raises(ConfigError, match="fd_efflite0"):
        pick_winner(rows)


def test_gate_auto_ranks_by_the_pretrained_distance_and_refuses_other_spaces(tmp_path, saved_model):
    repo = tmp_path / "models"
    quick = {"infra_validate": False}
    pre = {"pretrained_extractor": LITE0}
    first = _push(saved_model, repo, _metrics(tmp_path, "a", swd=20.0, fd_efflite0=50.0, **pre), **quick)
    assert first.pushed and first.metric == "fd_efflite0"
    # better SWD, worse pretrained distance: auto judges by the pretrained distance
    worse = _push(saved_model, repo, _metrics(tmp_path, "b", swd=5.0, fd_efflite0=60.0, **pre), **quick)
    assert not worse.pushed and worse.metric == "fd_efflite0" and "does not beat" in worse.summary()
    other = _push(saved_model, repo, _metrics(tmp_path, "c", swd=5.0, fd_efflite0=10.0,
                                              pretrained_extractor="efflite0-imagenet-256px"), **quick)
    assert not other.pushed and "cannot compare fd_efflite0" in other.summary()
    # a new result without pretrained features: auto falls back to SWD, which both have
    old_style = _push(saved_model, repo, _metrics(tmp_path, "d", swd=5.0), **quick)
    assert old_style.pushed and old_style.metric == "swd" and old_style.version == 2
    collapsed = _push(saved_model, repo, _metrics(tmp_path, "e", swd=1.0, collapse=True,
                                                  collapse_reason="generated pairs MS-SSIM 0.41 ≥ real 0.13"),
                      **quick)
    assert not collapsed.pushed
    assert "collapse alarm raised by the evaluation: generated pairs MS-SSIM 0.41" in collapsed.summary()
    with pytest.raises(ConfigError, match="unknown gate metric"):
        _push(saved_model, repo, _metrics(tmp_path, "f", swd=1.0), metric="beauty", **quick)


@pytest.mark.slow
def test_final_evaluation_judges_each_kept_checkpoint_and_export_ships_the_one_chosen(tmp_path):
    from medsynth import pipeline_steps
    from medsynth.evaluate.compare import best_row
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run
    from medsynth.serving.export import MODEL_CARD
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    run = tmp_path / "runs" / "r" / "final"
    result = train(TrainConfig(data="builtin://phantom", out=str(run), image_size=32, steps=6, batch_size=4,
                               checkpoint_every=2, backbone="mobilenet", backbone_weights="none",
                               latent_dim=16, generator_width=2, log_every=2))
    data = str(next((tmp_path / "runs" / "r" / "_data").rglob("manifest.json")).parent)
    metrics = evaluate_run(EvaluateConfig(run=str(result.run_dir), data=data, n=16, checkpoint="best"))
    judged = metrics["checkpoints_judged"]
    assert [j["step"] for j in judged] == [2, 4, 6]  # the three kept checkpoints
    assert metrics["step"] == best_row(judged)["step"]  # the best passing one, by the same rule
    saved = json.loads((run / "eval" / "metrics.json").read_text())
    assert saved["step"] == metrics["step"]

    class Model:
        path, metadata = str(tmp_path / "model"), {}

    pipeline_steps.export_step(str(run), str(run / "eval" / "metrics.json"), "generator", Model())
    card = json.loads((tmp_path / "model" / MODEL_CARD).read_text())
    assert card["step"] == metrics["step"]  # the SavedModel is the checkpoint the gate judged
    with pytest.raises(ConfigError, match="--checkpoint"):
        EvaluateConfig(run=str(run), data=data, checkpoint="first")


def test_with_floors_the_worse_ratio_ranks_so_lite0_space_alone_cannot_win(tmp_path):
    """A D trained in Lite0's features can lower FD in that space without better frames: ranked by the
    worse of its FD and SWD ratios to the real floor, the candidate that is far off in pixels loses."""
    floors = dict(floor_fd_efflite0=30.0, floor_swd=25.0, pretrained_extractor=LITE0, collapse=False)
    _plant(tmp_path, "gamed", fd_efflite0=45.0, swd=150.0, fd_ratio_efflite0=1.5, swd_ratio=6.0,
           ratio_to_floor=6.0, **floors)
    _plant(tmp_path, "honest", fd_efflite0=75.0, swd=60.0, fd_ratio_efflite0=2.5, swd_ratio=2.4,
           ratio_to_floor=2.5, **floors)
    result = compare_runs(tmp_path, ["gamed", "honest"], tmp_path / "cmp")
    assert (result.winner, result.criterion) == ("honest", "ratio_to_floor")
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert table.startswith("## Comparison — winner honest by worst ratio to the real floor = 2.50× the real "
                            "floor (FD (Lite0) 75 vs 30 real = 2.5×; SWD ×1e3 60 vs 25 real = 2.4×)")
    lead = table.split("### All metrics")[0]
    assert "| FD (Lite0) ÷ real floor ↓ |" in lead and "| FD (Lite0) ↓ |" not in lead  # answer first


def test_when_every_candidate_collapsed_the_comparison_says_so_in_one_line(tmp_path):
    _plant(tmp_path, "a", swd=30.0, collapse=True, step=200)
    _plant(tmp_path, "b", swd=20.0, collapse=True, step=200)
    result = compare_runs(tmp_path, ["a", "b"], tmp_path / "cmp")
    assert result.all_collapsed and result.winner == "b"
    record = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert record["all_collapsed"] is True
    assert record["verdict"] == ("every candidate raised the collapse alarm at step 200 (a, b): b is only "
                                 "the least bad by SWD ×1e3 (20)")
    _plant(tmp_path, "c", swd=90.0, collapse=False)
    healthy = compare_runs(tmp_path, ["a", "b", "c"], tmp_path / "cmp2", if_all_collapsed="stop")
    assert healthy.winner == "c" and not healthy.all_collapsed  # an alarm never wins against none


def test_if_all_collapsed_stop_ends_the_run_with_the_verdict_after_writing_the_pages(tmp_path):
    _plant(tmp_path, "a", swd=30.0, collapse=True, step=200)
    _plant(tmp_path, "b", swd=20.0, collapse=True, step=200)
    with pytest.raises(DataError, match=r"^every candidate raised the collapse alarm at step 200 \(a, b\).*"
                                        r"stopping \(if_all_collapsed=stop\)"):
        compare_runs(tmp_path, ["a", "b"], tmp_path / "cmp", if_all_collapsed="stop")
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["all_collapsed"] is True
    assert (tmp_path / "cmp" / "comparison.html").exists()  # the pages say why it stopped
    with pytest.raises(ConfigError, match="unknown if_all_collapsed 'retry'; choose one of stop, continue"):
        compare_runs(tmp_path, ["a", "b"], tmp_path / "cmp3", if_all_collapsed="retry")


def test_candidates_sharing_a_backbone_are_ranked_and_named_as_candidates(tmp_path):
    """Named configurations on one backbone (the demo's paper-lite0 and pg-fastgan-lite0): each row is the
    candidate, whatever backbone its evaluation records, and the winner names the run to continue."""
    floors = dict(floor_fd_efflite0=30.0, floor_swd=25.0, pretrained_extractor=LITE0, collapse=False,
                  backbone="efficientnet_lite0")
    _plant(tmp_path, "paper-lite0", fd_efflite0=400.0, swd=200.0, fd_ratio_efflite0=13.3, swd_ratio=8.0,
           ratio_to_floor=13.3, **floors)
    _plant(tmp_path, "pg-fastgan-lite0", fd_efflite0=210.0, swd=120.0, fd_ratio_efflite0=7.0, swd_ratio=4.8,
           ratio_to_floor=7.0, **floors)
    result = compare_runs(tmp_path, ["paper-lite0", "pg-fastgan-lite0"], tmp_path / "cmp")
    assert result.winner == "pg-fastgan-lite0"
    assert [r["backbone"] for r in result.rows] == ["paper-lite0", "pg-fastgan-lite0"]
    assert result.verdict.startswith("winner pg-fastgan-lite0 by worst ratio to the real floor = 7.00×")
