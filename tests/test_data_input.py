"""The tf.data pipeline (shapes, range, determinism, exact resume, sharding), resolve_dataset, real_frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from medsynth.data import input as data_input
from medsynth.data.input import (
    Augment,
    augment_batch,
    load_manifest,
    make_dataset,
    real_frames,
    resolve_dataset,
)
from medsynth.data.shards import read_records
from medsynth.errors import DataError

SIZE, N = 32, 64


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    return resolve_dataset(
        "builtin://phantom", SIZE, tmp_path_factory.mktemp("cache"), seed=0, phantom_frames=N
    )


def _take(ds, k):
    return [b.numpy() for b in ds.take(k)]


def _train_frames(ds_dir):
    m = load_manifest(ds_dir)
    return np.stack(
        [r.image for s in m["shards"] if s["split"] == "train" for r in read_records(ds_dir / s["file"])]
    )


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_shapes_range_and_content(ds_dir, cache):
    batches = _take(make_dataset(ds_dir, "train", batch_size=8, seed=0, cache=cache), 12)
    assert all(b.shape == (8, SIZE, SIZE, 1) and b.dtype == np.float32 for b in batches)
    x = np.concatenate(batches)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # Every batch element is one of the stored frames, scaled x / 127.5 - 1.
    frames = _train_frames(ds_dir)
    stored = {f.tobytes() for f in frames}
    back = np.rint((x[..., 0] + 1.0) * 127.5).astype(np.uint8)
    assert all(f.tobytes() in stored for f in back)
    n_train = len(frames)
    # One epoch visits every frame once (in-memory mode: a permutation per epoch).
    if cache:
        epoch = back[: n_train - n_train % 8]
        assert len({f.tobytes() for f in epoch}) == len(epoch)


def test_shuffle_mixes_the_whole_split():
    # A batch must not be a run of neighbouring frames (one cine loop): TF's RandomIndexShuffle, used
    # before, mapped stream positions 0..7 of 464 to 253, 252, 255, 254, 445, 248, 251, 250.
    n = 464
    frames = data_input._epoch_permutations(tf.range(3 * n, dtype=tf.int64), n, 0).numpy()
    epochs = frames.reshape(3, n)
    assert all(sorted(e) == list(range(n)) for e in epochs)  # each epoch a permutation
    assert not np.array_equal(epochs[0], epochs[1])  # a new one every epoch
    # Neighbouring positions land on unrelated frames: a uniform permutation's mean |step| is ~n/3.
    assert np.abs(np.diff(epochs[0])).mean() > n / 4
    assert abs(np.corrcoef(np.arange(n), epochs[0])[0, 1]) < 0.2
    # A batch spanning an epoch boundary takes each side from its own epoch's permutation.
    batch = data_input._epoch_permutations(tf.range(n - 4, n + 4, dtype=tf.int64), n, 0).numpy()
    np.testing.assert_array_equal(batch, np.concatenate([epochs[0][-4:], epochs[1][:4]]))
    other = data_input._epoch_permutations(tf.range(n, dtype=tf.int64), n, 1).numpy()
    assert not np.array_equal(other, epochs[0])  # and another per seed


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_deterministic_per_seed(ds_dir, cache):
    a = _take(make_dataset(ds_dir, batch_size=8, seed=1, augment=True, cache=cache), 6)
    b = _take(make_dataset(ds_dir, batch_size=8, seed=1, augment=True, cache=cache), 6)
    c = _take(make_dataset(ds_dir, batch_size=8, seed=2, augment=True, cache=cache), 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_iterator_checkpoint_resumes_exactly(ds_dir, tmp_path, cache):
    it = iter(make_dataset(ds_dir, batch_size=8, seed=5, augment=True, cache=cache))
    for _ in range(3):
        next(it)
    path = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt"))
    expected = [next(it).numpy() for _ in range(10)]  # crosses an epoch boundary (48 train frames)
    fresh = iter(make_dataset(ds_dir, batch_size=8, seed=5, augment=True, cache=cache))
    tf.train.Checkpoint(iterator=fresh).restore(path)
    got = [next(fresh).numpy() for _ in range(10)]
    assert all(np.array_equal(x, y) for x, y in zip(expected, got, strict=True))
    if cache:  # the in-memory mode checkpoints a position, not the images
        size = sum(p.stat().st_size for p in tmp_path.glob("ckpt*"))
        assert size < 64 * 1024


def test_augment_changes_images_within_range():
    x = tf.random.stateless_uniform([4, SIZE, SIZE, 1], seed=[1, 2], minval=-1, maxval=1)
    y = augment_batch(x, tf.constant([0, 0], tf.int64), Augment(flip_ud=0.5, rotate_deg=5.0, noise_std=0.02))
    assert y.shape == x.shape and float(tf.reduce_min(y)) >= -1 and float(tf.reduce_max(y)) <= 1
    assert not np.allclose(x.numpy(), y.numpy())
    # Switched off, it is the identity.
    off = Augment(flip_lr=0, flip_ud=0, rotate_deg=0, brightness=0, contrast=0, noise_std=0)
    np.testing.assert_allclose(augment_batch(x, tf.constant([0, 0], tf.int64), off).numpy(), x.numpy())
    # Same seed, same result; flips only mirror.
    flip = Augment(flip_lr=1.0, rotate_deg=0, brightness=0, contrast=0, noise_std=0)
    np.testing.assert_array_equal(
        augment_batch(x, tf.constant([3, 4], tf.int64), flip).numpy(), x.numpy()[:, :, ::-1]
    )


def test_input_context_shards(ds_dir):
    def ctx(i):
        return tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i, num_replicas_in_sync=2)

    a = _take(make_dataset(ds_dir, batch_size=8, repeat=False, shuffle=False, input_context=ctx(0)), 100)
    b = _take(make_dataset(ds_dir, batch_size=8, repeat=False, shuffle=False, input_context=ctx(1)), 100)
    assert a[0].shape == (4, SIZE, SIZE, 1)  # per-replica batch
    fa = {x.tobytes() for batch in a for x in batch}
    fb = {x.tobytes() for batch in b for x in batch}
    assert fa and fb and not fa & fb


def test_val_split_and_no_repeat(ds_dir):
    m = load_manifest(ds_dir)
    n_val = m["splits"]["val"]["frames"]
    batches = _take(make_dataset(ds_dir, "val", batch_size=4, repeat=False), 1000)
    assert len(batches) == n_val // 4
    with pytest.raises(DataError, match="test"):
        make_dataset(ds_dir, "test")


def test_real_frames(ds_dir):
    m = load_manifest(ds_dir)
    n_val = m["splits"]["val"]["frames"]
    few = real_frames(ds_dir, "val", n=4, seed=0)
    assert few.shape == (4, SIZE, SIZE) and few.dtype == np.uint8
    np.testing.assert_array_equal(few, real_frames(ds_dir, "val", n=4, seed=0))
    val = {
        r.image.tobytes()
        for s in m["shards"]
        if s["split"] == "val"
        for r in read_records(ds_dir / s["file"])
    }
    assert all(f.tobytes() in val for f in few)
    # Asking for more than val holds falls back to train (documented), never more than exists.
    many = real_frames(ds_dir, "val", n=n_val + 1, seed=0)
    assert len(many) == n_val + 1
    assert len(real_frames(ds_dir, "val", n=10_000)) == m["splits"]["train"]["frames"]


def test_resolve_dataset(ds_dir, tmp_path):
    assert resolve_dataset(str(ds_dir), SIZE, tmp_path) == ds_dir
    with pytest.raises(DataError, match=f"{SIZE} px.*64 px|64.*{SIZE}"):
        resolve_dataset(str(ds_dir), 64, tmp_path)
    with pytest.raises(DataError, match="missing-data"):
        resolve_dataset(str(tmp_path / "missing-data"), SIZE, tmp_path)
    with pytest.raises(DataError, match="builtin://phantom"):
        resolve_dataset("builtin://unknown", SIZE, tmp_path)
    with pytest.raises(DataError, match="holds a prepared data set"):
        resolve_dataset(str(ds_dir.parents[1]), SIZE, tmp_path)
    # The same source under the same cache is prepared once.
    again = resolve_dataset("builtin://phantom", SIZE, ds_dir.parents[2], seed=0, phantom_frames=N)
    assert again == ds_dir
    assert json.loads((ds_dir / "manifest.json").read_text())["hash"] == ds_dir.name


def test_streaming_mode_when_over_budget(ds_dir, monkeypatch):
    monkeypatch.setattr(data_input, "memory_budget", lambda: 0)
    a = _take(make_dataset(ds_dir, batch_size=8, seed=0), 3)
    assert a[0].shape == (8, SIZE, SIZE, 1)


@pytest.mark.parametrize("cache", [True, False], ids=["memory", "streaming"])
def test_skip_batches_continues_the_same_stream(ds_dir, cache):
    full = _take(make_dataset(ds_dir, batch_size=8, seed=4, augment=True, cache=cache), 9)
    resumed = _take(make_dataset(ds_dir, batch_size=8, seed=4, augment=True, cache=cache, skip_batches=5), 4)
    assert all(np.array_equal(x, y) for x, y in zip(full[5:], resumed, strict=True))


def test_resume_under_mirrored_strategy(ds_dir):
    """What the training loop does under a strategy: distribute, and resume with skip_batches."""
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    def batches(skip, k):
        dist = strategy.experimental_distribute_dataset(
            make_dataset(ds_dir, batch_size=8, seed=6, skip_batches=skip)
        )
        it = iter(dist)
        return [strategy.experimental_local_results(next(it))[0].numpy() for _ in range(k)]

    full = batches(0, 6)
    assert all(np.array_equal(x, y) for x, y in zip(full[3:], batches(3, 3), strict=True))
