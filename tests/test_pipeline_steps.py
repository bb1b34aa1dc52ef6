"""medsynth.pipeline_steps on object storage: every path a step builds stays a gs:// URI.

Each step runs against the real GCS emulator (tests/conftest.py), so a `Path` that turns
gs://bucket/x into gs:/bucket/x (then a local path) fails here, not on the cluster.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from medsynth import pipeline_steps, storage
from medsynth.errors import ConfigError, StorageError


def _artifact(path: Path) -> SimpleNamespace:
    return SimpleNamespace(path=str(path), metadata={})


def test_join_and_parent_keep_the_scheme():
    assert storage.join("gs://bkt/root/", "runs", "r1/", "/final") == "gs://bkt/root/runs/r1/final"
    assert storage.parent("gs://bkt/root/runs/r1/eval/metrics.json") == "gs://bkt/root/runs/r1/eval"
    assert storage.parent("gs://bkt/x") == "gs://bkt"
    with pytest.raises(StorageError, match="no parent"):
        storage.parent("gs://bkt")
    assert storage.join("/data/root", "runs", "r1") == "/data/root/runs/r1"
    assert storage.parent("/data/root/metrics.json") == "/data/root"


@pytest.mark.parametrize("bad", ["{{$.pipeline_job_uuid}}", "", "a/b"])
def test_run_root_refuses_what_is_not_a_run_id(bad):
    # An unsubstituted placeholder would put every run in one directory, resuming the last one.
    with pytest.raises(ConfigError, match="not a pipeline run id"):
        pipeline_steps.run_root("gs://b/medsynth", bad)


def test_run_root_and_the_training_tasks_share_the_layout():
    root = pipeline_steps.run_root("gs://b/medsynth", "5f1c-uuid")
    assert root == "gs://b/medsynth/runs/5f1c-uuid"
    task = pipeline_steps.TrainTask(dataset_dir="gs://b/d", storage_root="gs://b/medsynth",
                                    run_id="5f1c-uuid", run_name="final", backbone="xception",
                                    image_size=64, steps=10, batch_size=8, backbone_weights="none", seed=0,
                                    init_run="xception")
    cfg = task.config()
    assert cfg.out == f"{root}/final" and cfg.init_from == f"{root}/xception"


def test_a_named_candidate_fixes_its_fields_over_the_runs_parameters():
    """`paper-lite0` is the paper's head on Lite0 whatever the run's d_head; a bare backbone keeps it."""
    common = dict(dataset_dir="gs://b/d", storage_root="gs://b/medsynth", run_id="r1", image_size=32,
                  steps=10, batch_size=8, backbone_weights="none", seed=0, d_head="projected")
    named = pipeline_steps.TrainTask(run_name="paper-lite0", backbone="paper-lite0", **common).config()
    assert (named.backbone, named.d_head, named.d_recipe) == ("efficientnet_lite0", "paper", "medsynth")
    pg = pipeline_steps.TrainTask(run_name="pg-lite0", backbone="pg-lite0", **common).config()
    assert (pg.d_recipe, pg.d_passes, pg.draws, pg.beta_1) == ("projected-gan", "separate", "fresh", 0.0)
    bare = pipeline_steps.TrainTask(run_name="mobilenetv2", backbone="mobilenetv2", **common).config()
    assert (bare.backbone, bare.d_head) == ("mobilenetv2", "projected")
    with pytest.raises(ConfigError, match="unknown candidate 'pg-vgg'.*paper-lite0.*xception"):
        pipeline_steps.TrainTask(run_name="x", backbone="pg-vgg", **common).config()


def test_push_decision_lands_beside_the_metrics_in_the_bucket(gcs_bucket, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "saved_model.pb").write_bytes(b"x")  # refused before loading: the metrics say collapse
    metrics = f"{gcs_bucket}/medsynth/runs/r1/final/eval/metrics.json"
    storage.write_json(metrics, {"swd": 1.0, "collapse": True, "feature_extractor": "x"})
    decision = _artifact(tmp_path / "decision.md")
    pushed, version = pipeline_steps.push_step(
        _artifact(model), metrics, f"{gcs_bucket}/models", "generator", "swd", 0.0, decision
    )
    assert (pushed, version) == (False, 0)
    recorded = storage.read_json(f"{gcs_bucket}/medsynth/runs/r1/final/eval/push_decision.json")
    assert recorded["pushed"] is False and "collapse" in " ".join(recorded["reasons"])
    assert "refused" in Path(decision.path).read_text()
    assert not Path("gs:").exists()  # nothing went to a local "gs:" folder


def test_compare_builds_the_run_directory_from_root_and_run_id(gcs_bucket, tmp_path):
    root = f"{gcs_bucket}/medsynth"
    for backbone, swd in (("resnet50", 30.0), ("xception", 12.0)):
        run = f"{root}/runs/run-1/{backbone}"
        evaluation = {"swd": swd, "collapse": False, "feature_extractor": "x"}
        storage.write_json(f"{run}/eval/metrics.json", evaluation)
        storage.write_json(f"{run}/metrics.json", {"d_params": 10, "d_trainable_params": 2})
    table, pictures = _artifact(tmp_path / "table.md"), _artifact(tmp_path / "pictures.html")
    (winner,) = pipeline_steps.compare_step(root, "run-1", ["resnet50", "xception"], "swd", table, pictures)
    assert winner == "xception"
    assert storage.read_json(f"{root}/runs/run-1/comparison/comparison.json")["winner"] == "xception"
    assert "**xception**" in Path(table.path).read_text()


def test_prepare_reads_its_data_set_back_from_the_bucket(gcs_bucket, tmp_path):
    dataset, preview = _artifact(tmp_path / "dataset"), _artifact(tmp_path / "preview.html")
    (uri,) = pipeline_steps.prepare_step("builtin://phantom", 32, 0, f"{gcs_bucket}/medsynth", 24,
                                         dataset, preview)
    assert uri.startswith(f"{gcs_bucket}/medsynth/datasets/") and storage.is_complete(uri)
    manifest = json.loads((Path(dataset.path) / "manifest.json").read_text())
    assert dataset.metadata["dataset_dir"] == uri and dataset.metadata["hash"] == manifest["hash"]
    page = Path(preview.path).read_text()
    assert "<html>" in page
    # the page counts what the manifest says: frames and labelled frames per split
    for split in ("train", "val"):
        assert f"labelled_frames_{split}" in page and f"frames_{split}" in page
    assert manifest["keypoints"]["labelled_frames"]["train"] == manifest["splits"]["train"]["frames"]


@pytest.mark.parametrize("env,port", [({"MEDSYNTH_METRICS_PORT": "9400"}, 9400), ({}, None)])
def test_train_serves_metrics_on_the_port_its_pod_names(monkeypatch, tmp_path, env, port):
    # On the cluster the training task's pod sets MEDSYNTH_METRICS_PORT (launcher.configure_gpu_task)
    # for k8s/monitoring/podmonitor-kfp.yaml; under kfp.local nothing is set and nothing is served.
    from medsynth.train import loop

    monkeypatch.delenv("MEDSYNTH_METRICS_PORT", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return loop.TrainResult(run_dir=tmp_path, step=1, metrics={})

    monkeypatch.setattr(loop, "train", fake_train)
    model, metrics, samples = (_artifact(tmp_path / n) for n in ("model", "metrics", "samples.html"))
    metrics.log_metric = lambda *a: None
    task = pipeline_steps.TrainTask(dataset_dir=str(tmp_path / "data"), storage_root=str(tmp_path),
                                    run_id="run-1", run_name="final", backbone="xception", image_size=32,
                                    steps=2, batch_size=4, backbone_weights="none", seed=0)
    pipeline_steps.train_step(task, model, metrics, samples)
    (cfg,) = seen
    assert cfg.metrics_port == port and cfg.out == str(tmp_path / "runs" / "run-1" / "final")


def test_the_demo_final_training_config_is_the_pipelines_with_the_demos_arguments(tmp_path):
    """What bench/train_step.py --demo measures: the pipeline's final task as the demo runs it."""
    from medsynth.demo import AFTER_TRAINING_MINUTES, DEMO_MINUTES, DemoConfig, final_train_config
    from medsynth.train.config import TrainConfig

    demo = DemoConfig(pipeline_root=str(tmp_path), steps=700, batch_size=8, seed=3)
    cfg = final_train_config(demo, "/data/set")
    assert (cfg.data, cfg.backbone, cfg.image_size, cfg.steps, cfg.batch_size, cfg.seed) == (
        "/data/set", "efficientnet_lite0", 64, 700, 8, 3)
    # by default the demo's best candidate (its last) won: its named configuration, continued
    assert cfg.out.endswith("/runs/demo/final") and cfg.init_from.endswith("/runs/demo/pg-fastgan-sep-lite0")
    assert (cfg.d_head, cfg.backbone_weights, cfg.strategy) == ("projected", "imagenet", "auto")
    assert (cfg.d_recipe, cfg.d_feature_size, cfg.d_blocks, cfg.generator, cfg.generator_width) == (
        "projected-gan", 0, "separable", "fastgan", 8)
    # the demo's minutes reach the final training as a deadline (the pipeline's train_until): what is
    # left of them after the time judging, export and push take; 0 lifts it
    budget = DEMO_MINUTES - AFTER_TRAINING_MINUTES
    assert budget - 0.5 < cfg.max_minutes <= budget
    unlimited = DemoConfig(pipeline_root=str(tmp_path), steps=700, minutes=0)
    assert final_train_config(unlimited, "/data/set").max_minutes is None
    # overrides win over the candidate, before the config resolves its defaults: a recipe brings its own
    changed = final_train_config(demo, "/d", overrides=TrainConfig.parse_overrides(
        ["d_recipe=medsynth", "d_max_channels=64", "r1_gamma=0.5", "augment=true"]))
    assert (changed.d_recipe, changed.d_scale_mixing, changed.d_max_channels, changed.r1_gamma,
            changed.augment) == ("medsynth", "residual", 64, 0.5, True)


def test_a_training_tasks_limit_is_the_tighter_of_its_minutes_and_its_deadline():
    import time

    from medsynth.pipeline_steps import TrainTask

    base = dict(dataset_dir="/d", storage_root="/s", run_id="r", run_name="final", backbone="convnet",
                image_size=32, steps=10, batch_size=4, backbone_weights="none", seed=0)
    now = time.time()
    assert TrainTask(**base).minutes_left() is None
    assert TrainTask(**base, max_minutes=7.0).minutes_left() == 7.0
    assert 4.9 < TrainTask(**base, train_until=now + 300).minutes_left() <= 5.0
    assert TrainTask(**base, max_minutes=3.0, train_until=now + 300).minutes_left() == 3.0
    assert 4.9 < TrainTask(**base, max_minutes=9.0, train_until=now + 300).minutes_left() <= 5.0
    # a deadline already past still trains one step (and stops after it)
    assert TrainTask(**base, train_until=now - 60).minutes_left() == pytest.approx(1e-3)


@pytest.mark.parametrize("pair, match", [("nope=1", "training option"), ("steps", "NAME=VALUE"),
                                         ("steps=ten", "takes a int"), ("augment=maybe", "true or false")])
def test_overrides_refuse_what_is_no_field_or_does_not_convert(pair, match):
    from medsynth.train.config import TrainConfig

    with pytest.raises(ConfigError, match=match):
        TrainConfig.parse_overrides([pair])
