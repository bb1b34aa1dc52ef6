"""`prepare` on the built-in phantom: layout, manifest, splits by patient, shards, idempotence."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from medsynth.data.phantom import render_frame
from medsynth.data.prepare import PrepareConfig, assign_splits, prepare
from medsynth.data.shards import read_records, sha256_file
from medsynth.errors import ConfigError, DataError

SIZE, N = 32, 64  # 4 phantom patients of 2 loops x 8 frames


@pytest.fixture(scope="module")
def phantom_ds(tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    return prepare(
        PrepareConfig(
            source="builtin://phantom",
            out=str(out),
            image_size=SIZE,
            phantom_frames=N,
            val_fraction=0.25,
            seed=3,
        )
    )


def _records(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    return manifest, {s["split"]: [r for r in read_records(ds / s["file"])] for s in manifest["shards"]}


def test_layout_and_manifest(phantom_ds):
    ds = phantom_ds
    assert ds.parent.name == "phantom" and ds.parent.parent.name == "datasets"
    assert {p.name for p in ds.iterdir()} >= {"manifest.json", "shards", "preview.png", "quarantine.json"}
    m = json.loads((ds / "manifest.json").read_text())
    assert m["hash"] == ds.name and m["image_size"] == SIZE and m["dtype"] == "uint8"
    assert m["synthetic"] is True and m["frames"] == N
    assert sum(v["frames"] for v in m["splits"].values()) == N
    assert sum(s["examples"] for s in m["shards"]) == N
    for s in m["shards"]:
        assert sha256_file(ds / s["file"]) == s["sha256"]
    stats = m["pixel_stats"]
    assert 0 <= stats["min"] < stats["mean"] < stats["max"] <= 255 and stats["std"] > 0
    assert m["software"]["medsynth"]
    assert json.loads((ds / "quarantine.json").read_text())["count"] == 0
    preview = Image.open(ds / "preview.png")
    assert preview.text.get("medsynth:synthetic") == "true"  # phantom frames are synthetic


def test_split_by_patient_and_round_trip(phantom_ds):
    m, recs = _records(phantom_ds)
    train_p = {r.patient for r in recs["train"]}
    val_p = {r.patient for r in recs["val"]}
    assert train_p and val_p and not train_p & val_p
    assert train_p == set(m["splits"]["train"]["patients"]) and val_p == set(m["splits"]["val"]["patients"])
    # Every loop lies wholly in one split.
    assert not {r.loop for r in recs["train"]} & {r.loop for r in recs["val"]}
    # The shards hold exactly the phantom's frames: frame index = loop * 8 + frame.
    seen = set()
    for r in recs["train"] + recs["val"]:
        index = r.loop * 8 + r.frame
        seen.add(index)
        assert r.image.dtype == np.uint8 and r.image.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(r.image, render_frame(SIZE, 3, index).pixels)
    assert seen == set(range(N))


def test_rerun_reuses(phantom_ds, caplog):
    mtime = os.stat(phantom_ds / "manifest.json").st_mtime_ns
    with caplog.at_level(logging.INFO, logger="medsynth.data.prepare"):
        again = prepare(
            PrepareConfig(
                source="builtin://phantom",
                out=str(phantom_ds.parents[2]),
                image_size=SIZE,
                phantom_frames=N,
                val_fraction=0.25,
                seed=3,
            )
        )
    assert again == phantom_ds
    assert "reusing" in caplog.text
    assert os.stat(phantom_ds / "manifest.json").st_mtime_ns == mtime


def test_settings_change_the_hash(phantom_ds, tmp_path):
    other = prepare(
        PrepareConfig(
            source="builtin://phantom",
            out=str(tmp_path),
            image_size=SIZE,
            phantom_frames=N,
            val_fraction=0.25,
            seed=4,
        )
    )
    assert other.name != phantom_ds.name


def test_assign_splits_deterministic_and_nonempty():
    groups = [f"g{i}" for i in range(40)]
    a = assign_splits(groups, 0.25, seed=0)
    assert a == assign_splits(reversed(groups), 0.25, seed=0)
    assert a != assign_splits(groups, 0.25, seed=1)
    assert sum(v == "val" for v in a.values()) == 10
    two = assign_splits(["a", "b"], 0.1, seed=0)
    assert sorted(two.values()) == ["train", "val"]  # both splits get a patient when possible
    assert assign_splits(["a"], 0.1, seed=0) == {"a": "train"}
    assert set(assign_splits(groups, 0.0, seed=0).values()) == {"train"}


def test_bad_sources(tmp_path):
    with pytest.raises(DataError, match="builtin://phantom") as e:
        prepare(PrepareConfig(source="builtin://nope", out=str(tmp_path), image_size=SIZE))
    assert "nope" in str(e.value)
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="no-such-folder"):
        prepare(PrepareConfig(source=str(missing), out=str(tmp_path), image_size=SIZE))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no DICOM or image files"):
        prepare(PrepareConfig(source=str(empty), out=str(tmp_path / "o"), image_size=SIZE))
    assert not (tmp_path / "o" / "datasets").exists() or not any(
        (tmp_path / "o" / "datasets").rglob("manifest.json")
    )
    with pytest.raises(ConfigError, match="--val-fraction"):
        prepare(
            PrepareConfig(source="builtin://phantom", out=str(tmp_path), image_size=SIZE, val_fraction=1.5)
        )


def test_parallel_map_is_ordered_and_bounded():
    """The decode pool keeps only a few inputs in flight, whatever their number (flat memory)."""
    import time

    from medsynth.data.prepare import _parallel
    from medsynth.data.sources import Limits

    pulled = []

    def items():
        for i in range(40):
            pulled.append(i)
            yield -i

    out, ahead = [], []
    for k, r in enumerate(_parallel(abs, items(), 40, 2, (None, Limits()), chunksize=2)):
        out.append(r)
        time.sleep(0.01)  # a consumer slower than the workers
        ahead.append(len(pulled) - (k + 1))
    assert out == list(range(40))
    assert max(ahead) <= 2 * 2 * 2 + 2  # window (2 chunks per worker) plus one chunk being cut


def test_cli_prepare(tmp_path, capsys):
    from medsynth.cli import main

    assert (
        main(
            [
                "prepare",
                "builtin://phantom",
                "--out",
                str(tmp_path),
                "--image-size",
                str(SIZE),
                "--phantom-frames",
                "16",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dataset ready:" in out and "datasets/phantom/" in out
    assert main(["prepare", "builtin://nope", "--out", str(tmp_path), "--image-size", str(SIZE)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "builtin://phantom" in err[0]
