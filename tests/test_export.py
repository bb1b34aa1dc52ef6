"""The exported SavedModel: signatures, determinism, model card, warm-up file, clean loading, export_run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from medsynth.errors import ConfigError, ServingError
from medsynth.models.generator import build_generator
from medsynth.pictures import to_uint8
from medsynth.serving.export import (
    MODEL_CARD,
    SIGNATURE_PNG,
    SIGNATURE_SEED,
    SIGNATURE_Z,
    WARMUP_FILE,
    ExportConfig,
    export_generator,
    export_run,
    list_versions,
    read_warmup_requests,
)

SIZE, LATENT = 16, 8


@pytest.fixture(scope="module")
def generator() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(3)
    g = build_generator(SIZE, latent_dim=LATENT, width=2)
    # move the BN statistics away from (0, 1) so that inference mode matters
    for layer in g.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.moving_mean.assign(tf.random.normal(layer.moving_mean.shape, stddev=0.1))
            layer.moving_variance.assign(tf.random.uniform(layer.moving_variance.shape, 0.5, 1.5))
    return g


@pytest.fixture(scope="module")
def exported(generator: tf.keras.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "generator"
    meta = {"model_name": "generator", "version": 1, "backbone": "xception", "run_id": "run-a", "step": 7,
            "metrics": {"swd": 0.5}}
    return export_generator(generator, root / "1", metadata=meta)


@pytest.fixture(scope="module")
def loaded(exported: Path):
    return tf.saved_model.load(str(exported))


def test_layout_card_and_permissions(exported: Path) -> None:
    assert (exported / "saved_model.pb").is_file()
    assert (exported / "variables").is_dir()
    card = json.loads((exported / MODEL_CARD).read_text())
    assert card["synthetic"] is True
    assert (card["latent_dim"], card["image_size"], card["channels"]) == (LATENT, SIZE, 1)
    assert (card["backbone"], card["run_id"], card["step"], card["version"]) == ("xception", "run-a", 7, 1)
    assert card["metrics"] == {"swd": 0.5}
    assert set(card["signatures"]) == {SIGNATURE_Z, SIGNATURE_SEED, SIGNATURE_PNG}
    assert card["created"]
    # a serving container runs as another user: the version directory must be readable by others
    assert exported.stat().st_mode & 0o005 == 0o005
    # only the finished directory is visible: no temp directory named like a version
    assert [p.name for p in exported.parent.iterdir()] == ["1"]


def test_signatures(loaded) -> None:
    sigs = loaded.signatures
    assert set(sigs) == {SIGNATURE_Z, SIGNATURE_SEED, SIGNATURE_PNG}
    z_spec = sigs[SIGNATURE_Z].structured_input_signature[1]
    assert list(z_spec) == ["z"] and z_spec["z"].dtype == tf.float32
    assert z_spec["z"].shape.as_list() == [None, LATENT]
    for name in (SIGNATURE_SEED, SIGNATURE_PNG):
        spec = sigs[name].structured_input_signature[1]
        assert list(spec) == ["seed"] and spec["seed"].dtype == tf.int64
    assert set(sigs[SIGNATURE_Z].structured_outputs) == {"images", "png_bytes"}
    assert set(sigs[SIGNATURE_SEED].structured_outputs) == {"images", "png_bytes"}
    assert set(sigs[SIGNATURE_PNG].structured_outputs) == {"png_bytes"}


def test_images_match_the_keras_generator(generator: tf.keras.Model, loaded) -> None:
    z = np.random.default_rng(0).normal(size=(5, LATENT)).astype(np.float32)
    out = loaded.signatures[SIGNATURE_Z](z=tf.constant(z))
    images, pngs = out["images"].numpy(), out["png_bytes"].numpy()
    assert images.dtype == np.uint8 and images.shape == (5, SIZE, SIZE, 1)
    expected = to_uint8(generator(z, training=False).numpy())
    diff = np.abs(images[..., 0].astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # graph vs eager: at most a rounding flip
    assert images.std() > 0  # not a constant picture
    for img, png in zip(images, pngs, strict=True):
        decoded = np.asarray(Image.open(io.BytesIO(png)))
        np.testing.assert_array_equal(decoded, img[..., 0])


def test_seed_signatures_are_deterministic_in_any_batch(loaded) -> None:
    seeds = tf.constant([11, 12, 13, 14, 15, 16], tf.int64)
    full = loaded.signatures[SIGNATURE_SEED](seed=seeds)
    part = loaded.signatures[SIGNATURE_SEED](seed=tf.constant([15, 11], tf.int64))
    again = loaded.signatures[SIGNATURE_SEED](seed=seeds)
    np.testing.assert_array_equal(full["images"].numpy(), again["images"].numpy())
    np.testing.assert_array_equal(part["images"].numpy()[0], full["images"].numpy()[4])
    np.testing.assert_array_equal(part["images"].numpy()[1], full["images"].numpy()[0])
    assert part["png_bytes"].numpy()[0] == full["png_bytes"].numpy()[4]
    # different seeds give different images
    assert not np.array_equal(full["images"].numpy()[0], full["images"].numpy()[1])
    png_only = loaded.signatures[SIGNATURE_PNG](seed=seeds)
    assert list(png_only["png_bytes"].numpy()) == list(full["png_bytes"].numpy())
    # the seed path is the z path with z = stateless_normal(seed)
    z = tf.random.stateless_normal([1, LATENT], seed=tf.constant([13, 0], tf.int64))
    via_z = loaded.signatures[SIGNATURE_Z](z=z)["images"].numpy()[0]
    assert np.abs(via_z.astype(int) - full["images"].numpy()[2].astype(int)).max() <= 1


def test_non_finite_z_is_refused_inside_the_graph(loaded) -> None:
    z = np.zeros((2, LATENT), np.float32)
    z[1, 3] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="finite"):
        loaded.signatures[SIGNATURE_Z](z=tf.constant(z))


def test_warmup_file_holds_predict_logs(exported: Path) -> None:
    logs = read_warmup_requests(exported / WARMUP_FILE)
    assert len(logs) == 3
    got = {}
    for log in logs:
        assert log.WhichOneof("log_type") == "predict_log"
        req = log.predict_log.request
        assert req.model_spec.name == "generator"
        got[req.model_spec.signature_name] = {k: tf.make_ndarray(v) for k, v in req.inputs.items()}
    assert set(got) == {SIGNATURE_Z, SIGNATURE_SEED, SIGNATURE_PNG}
    assert got[SIGNATURE_Z]["z"].shape == (1, LATENT) and got[SIGNATURE_Z]["z"].dtype == np.float32
    assert got[SIGNATURE_SEED]["seed"].dtype == np.int64


def test_loads_in_a_clean_process_without_medsynth_or_addons(exported: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import io, json, sys
        import numpy as np, tensorflow as tf
        from PIL import Image
        m = tf.saved_model.load(sys.argv[1])
        out = m.signatures["serving_default"](z=tf.zeros([3, int(sys.argv[2])]))
        imgs, pngs = out["images"].numpy(), out["png_bytes"].numpy()
        ok = [np.array_equal(np.asarray(Image.open(io.BytesIO(p))), i[..., 0]) for p, i in zip(pngs, imgs)]
        seeded = m.signatures["generate_from_seed"](seed=tf.constant([5], tf.int64))["png_bytes"].numpy()[0]
        prefixes = ("medsynth.", "tensorflow_addons")
        bad = sorted(k for k in sys.modules if k == "medsynth" or k.startswith(prefixes))
        print(json.dumps({"dtype": str(imgs.dtype), "shape": list(imgs.shape), "png_ok": ok, "bad": bad,
                          "seeded": seeded.hex()}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", code, str(exported), str(LATENT)], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["bad"] == []
    assert result["dtype"] == "uint8" and result["shape"] == [3, SIZE, SIZE, 1]
    assert result["png_ok"] == [True, True, True]
    here = tf.saved_model.load(str(exported)).signatures[SIGNATURE_SEED](seed=tf.constant([5], tf.int64))
    assert bytes.fromhex(result["seeded"]) == here["png_bytes"].numpy()[0]  # same bytes in another process


def test_a_failed_export_leaves_nothing_behind(tmp_path: Path) -> None:
    z = tf.keras.Input((4,))
    not_images = tf.keras.Model(z, tf.keras.layers.Dense(3)(z))
    with pytest.raises(ServingError, match="not \\[n, S, S, 1\\]"):
        export_generator(not_images, tmp_path / "m" / "1", metadata={})
    assert not (tmp_path / "m" / "1").exists()


# --- export_run ------------------------------------------------------------------------------------
def _fake_run(run_dir: Path, generator: tf.keras.Model, step: int) -> Path:
    """A training run as `medsynth train` leaves it: config.json and a checkpoint of G."""
    from medsynth.train.checkpoints import CONFIG_FILE, RunCheckpoints

    run_dir.mkdir(parents=True)
    (run_dir / CONFIG_FILE).write_text(json.dumps({
        "image_size": SIZE, "latent_dim": LATENT, "generator_width": 2, "generator_norm": "batch",
        "backbone": "mobilenetv2", "backbone_weights": "none", "seed": 4, "run_id": run_dir.name,
    }))
    (run_dir / "metrics.json").write_text(json.dumps({"swd": 0.25}))
    RunCheckpoints(run_dir, {}, keep=1, generator=generator).save(step)
    return run_dir


@pytest.fixture(scope="module")
def run_dir(generator: tf.keras.Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fake_run(tmp_path_factory.mktemp("runs") / "run-x", generator, step=12)


def test_export_run_versions(run_dir: Path, generator: tf.keras.Model, tmp_path: Path,
                             capsys: pytest.CaptureFixture) -> None:
    from medsynth.cli import main

    repo = tmp_path / "models"
    (repo / "generator" / "4").mkdir(parents=True)  # an older version already served
    assert main(["export", "--run", str(run_dir), "--model-repository", str(repo)]) == 0
    path = repo / "generator" / "5"
    assert f"exported SavedModel: {path}" in capsys.readouterr().out
    assert list_versions(repo / "generator") == [4, 5]
    card = json.loads((path / MODEL_CARD).read_text())
    assert (card["run_id"], card["step"], card["backbone"]) == ("run-x", 12, "mobilenetv2")
    assert card["version"] == 5 and card["metrics"] == {"swd": 0.25} and card["synthetic"] is True
    # the trained weights went into the SavedModel
    z = np.random.default_rng(1).normal(size=(2, LATENT)).astype(np.float32)
    images = tf.saved_model.load(str(path)).signatures[SIGNATURE_Z](z=tf.constant(z))["images"].numpy()
    assert np.abs(images[..., 0].astype(int) - to_uint8(generator(z, training=False).numpy())).max() <= 1
    # the same run and step again is a no-op; a clash with another model is an error
    mtime = (path / "saved_model.pb").stat().st_mtime_ns
    again = export_run(ExportConfig(run=str(run_dir), model_repository=str(repo), version=5))
    assert Path(again) == path and (path / "saved_model.pb").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="already holds another model"):
        export_run(ExportConfig(run=str(run_dir), model_repository=str(repo), version=4))
    with pytest.raises(ConfigError, match="positive"):
        export_run(ExportConfig(run=str(run_dir), model_repository=str(repo), version=0))


def test_export_cli_bad_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medsynth.cli import main

    assert main(["export", "--run", str(tmp_path / "missing"), "--model-repository", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "medsynth export: error:" in err[0] and "missing" in err[0]


@pytest.mark.slow
def test_export_run_to_gcs(run_dir: Path, gcs_emulator) -> None:
    from medsynth import storage

    bucket = gcs_emulator.create_bucket()
    repo = f"{bucket}/models"
    storage.write_text(f"{repo}/generator/2/saved_model.pb", "an older version")
    target = export_run(ExportConfig(run=str(run_dir), model_repository=repo))
    assert target == f"{repo}/generator/3"
    assert storage.is_complete(target)
    assert list_versions(f"{repo}/generator") == [2, 3]
    assert storage.read_json(f"{target}/{MODEL_CARD}")["run_id"] == "run-x"
    assert export_run(ExportConfig(run=str(run_dir), model_repository=repo, version=3)) == target
