"""Reading prepared data back: find or make a data set, and the `tf.data` pipeline that feeds training.

`make_dataset` has two modes (see its docstring), both deterministic per seed:
- in memory (the usual case): the split's frames are loaded once; batch b holds frames
  `perm_(seed, epoch)[i mod N]` for its element indices i — a full new permutation each
  epoch — gathered, scaled to [-1, 1] and augmented on whole batches. Every batch is a pure function
  of its index, so iterator checkpoints are symbolic (~1 KB) and `skip_batches` resumes for free.
- streaming (splits larger than `memory_budget()`): shard files → parallel deterministic interleave →
  seeded shuffle buffer → repeat → batch → parse + `decode_raw` + scale + augment per batch.
Everything is a TF op (no `py_function`), so `tf.train.Checkpoint(iterator=iter(ds))` saves and
restores the exact position; under a `tf.distribute` strategy use `skip_batches` instead.

Key points (`keypoints=True`) ride along as padded sets (`keypoints.MAX_POINTS`), moved by the same
flips and rotations as the pixels; `labelled_only=True` streams only labelled frames (the tracker's and
the conditional generator's training data). `labelled_frames` reads them as numpy arrays.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth import storage
from medsynth.data.keypoints import MAX_POINTS, LabelledFrames, flip_lr
from medsynth.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHUFFLE_BYTES = 256 << 20  # shuffle buffer cap when the split is larger than this


@dataclass(frozen=True)
class Augment:
    """X-ray-plausible augmentation of real frames; every part switchable (0 = off).

    Defaults are what is safe to apply to the real images alone in a GAN: a generator learns whatever
    the reals look like, augmentations included ("leaking"), so only transformations whose results are
    themselves plausible frames are on — left-right flips (LAO and RAO projections mirror each other)
    and mild brightness/contrast (dose and display differ between acquisitions). Up-down flips (the
    catheter enters from one side), small rotations and quantum noise are available but off: they
    leak. What transforms reals and fakes alike, inside the training step, is DiffAugment
    (`medsynth.train.augment`, `--d-augment`). Amounts are in units of the [-1, 1] image range.
    Measured on 2 CPU cores at 256 px: ~5,000 images/s with the defaults, ~300 with rotation and noise.
    """

    flip_lr: float = 0.5
    flip_ud: float = 0.0
    rotate_deg: float = 0.0
    brightness: float = 0.05
    contrast: float = 0.1
    noise_std: float = 0.0


def load_manifest(dataset_dir: str | Path) -> dict:
    path = Path(dataset_dir) / MANIFEST
    if not path.exists():
        raise DataError(
            f"{dataset_dir} is not a prepared data set (no {MANIFEST}); run `medsynth prepare` on it"
        )
    return storage.read_json(path)


def resolve_dataset(
    uri: str, image_size: int, cache_root: str | Path, seed: int = 0, phantom_frames: int = 512
) -> Path:
    """A local prepared data set directory for `uri`, whatever `uri` is.

    - a local prepared data set (has manifest.json): itself;
    - a `gs://` prepared data set: downloaded once into `<cache_root>/fetched/` (complete ones only);
    - anything else is a source (builtin://phantom, a folder, a .zip, a gs:// prefix of frames):
      prepared under `cache_root` (re-used when already prepared with the same content and settings).
    """
    from medsynth.data.prepare import PrepareConfig, prepare

    uri = str(uri)
    cache_root = Path(cache_root)
    if storage.is_gcs(uri):
        manifest = _gcs_manifest(uri)
        if manifest is not None:
            _check_size(uri, manifest, image_size)
            # Published data sets never change under the same URI: fetched once, reused after.
            return storage.fetch(uri.rstrip("/"), cache_root / "fetched", require_complete=True)
    elif "://" not in uri:
        path = Path(uri).expanduser()
        if (path / MANIFEST).exists():
            _check_size(uri, load_manifest(path), image_size)
            return path
        if not path.exists():
            raise DataError(
                f"data set {uri} does not exist: give a prepared data set, a folder, a .zip, "
                "gs://bucket/prefix or builtin://phantom"
            )
    cfg = PrepareConfig(
        source=uri, out=str(cache_root), image_size=image_size, seed=seed, phantom_frames=phantom_frames
    )
    return Path(prepare(cfg))


def _gcs_manifest(uri: str) -> dict | None:
    """The manifest of a prepared data set at `uri`, or None when `uri` is not one (then it is a source)."""
    import json

    path = uri.rstrip("/") + "/" + MANIFEST
    if not storage.exists(path):
        return None
    return json.loads(storage.read_bytes(path))


def _check_size(uri: str, manifest: dict, image_size: int) -> None:
    if int(manifest["image_size"]) != int(image_size):
        raise DataError(
            f"data set {uri} holds {manifest['image_size']} px frames, but {image_size} px were asked for; "
            f"prepare the source again with --image-size {image_size}"
        )


def _shard_files(dataset_dir: Path, manifest: dict, split: str) -> list[str]:
    if split not in manifest["splits"]:
        raise DataError(
            f"data set {dataset_dir} has no split {split!r}; it has {', '.join(manifest['splits'])}"
        )
    files = [
        str(dataset_dir / s["file"]) for s in manifest["shards"] if s["split"] == split and s["examples"]
    ]
    if not files:
        raise DataError(f"data set {dataset_dir} has no {split} frames")
    return files


def memory_budget() -> int:
    """What the in-memory mode may take: a quarter of available memory, at most 1 GiB (the frames are a
    constant in the dataset graph, which must stay well under protobuf's 2 GiB limit)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return min(int(line.split()[1]) * 1024 // 4, 1 << 30)
    except OSError:
        pass
    return 512 << 20


def _dtype(manifest: dict):
    import tensorflow as tf

    return {"uint8": tf.uint8, "uint16": tf.uint16}[manifest["dtype"]]


def make_dataset(
    dataset_dir: str | Path,
    split: str = "train",
    batch_size: int = 16,
    seed: int = 0,
    augment: bool | Augment = False,
    repeat: bool = True,
    input_context=None,
    cache: bool = True,
    shuffle: bool = True,
    skip_batches: int = 0,
    keypoints: bool = False,
    labelled_only: bool = False,
):
    """float32 batches [batch, S, S, 1] in [-1, 1], deterministic per seed, checkpointable.

    With `keypoints=True` each batch is a tuple `(images [B, S, S, 1] float32, points [B, K, 2] float32,
    classes [B, K] int32, mask [B, K] bool)`, K = `MAX_POINTS`, in the convention of
    `medsynth.data.keypoints`; augmentation's flips and rotation move the points with the pixels (a
    point rotated out of the frame is masked off). An unlabelled frame has an all-False mask, like a
    labelled frame with no point in view: pass `labelled_only=True` to stream only labelled frames
    (a `DataError` naming the data set when its split has none). Without either, batches are exactly
    those of earlier versions.

    `skip_batches=k` starts at batch k of the same stream: resuming at step k gives exactly the batches
    an uninterrupted run would have seen. This is the resume path under `tf.distribute` strategies,
    whose distributed iterators TF 2.15 cannot put in a `tf.train.Checkpoint` (not `Trackable`);
    a plain iterator (no strategy) can be checkpointed too. In memory mode skipping costs nothing;
    streaming, it reads and drops k batches.

    `batch_size` is the global batch; with an `input_context` (from
    `strategy.distribute_datasets_from_function`) each pipeline yields the per-replica batch and reads
    only its share. Without one, `experimental_distribute_dataset` shards by data.

    Two modes, chosen by size:
    - in memory (`cache=True` and the split fits in `memory_budget()`): the split's frames are loaded
      once; element i of the stream is frame `perm_(seed, epoch)[i mod N]` — a full,
      different permutation every epoch, a pure function of i. The iterator's checkpoint is then
      symbolic: a position, ~1 KB, not the images (a `cache()`+`shuffle()` iterator checkpoint holds
      the cache and the shuffle buffer, i.e. the data set, in every checkpoint).
    - streaming (larger splits): shards are interleaved in parallel through a seeded shuffle buffer
      (<= 256 MiB); its iterator checkpoints contain that buffer.
    """
    import tensorflow as tf

    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    files = _shard_files(dataset_dir, manifest, split)
    size = int(manifest["image_size"])
    dtype = _dtype(manifest)
    stored = frames = int(manifest["splits"][split]["frames"])
    if labelled_only:
        frames = labelled_count(manifest, split)
        if not frames:
            raise DataError(
                f"data set {dataset_dir} has no labelled {split} frames; prepare a source with key points "
                "(COCO files beside the frames, or builtin://phantom)"
            )
    per_batch = batch_size
    if input_context is not None:
        per_batch = input_context.get_per_replica_batch_size(batch_size)
    if per_batch < 1:
        raise DataError(f"batch size {batch_size} gives {per_batch} images per replica")
    if not repeat and frames < per_batch:
        raise DataError(
            f"{split} split of {dataset_dir} has {frames} frames, fewer than one batch of {per_batch}"
        )
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    pipeline_id = input_context.input_pipeline_id if input_context is not None else 0
    scale = float(np.iinfo(dtype.as_numpy_dtype).max) / 2.0
    params = augment if isinstance(augment, Augment) else (Augment() if augment else None)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF
        if input_context is not None
        else tf.data.experimental.AutoShardPolicy.DATA
    )

    def transform(pixels, aug_seed):
        """Stored integers → float32 [-1, 1] (+ augmentation) for one batch."""
        x = tf.cast(tf.reshape(pixels, [per_batch, size, size, 1]), tf.float32) / scale - 1.0
        return x if params is None else augment_batch(x, aug_seed, params)

    def transform_points(pixels, aug_seed, points, classes, mask):
        """The same for a batch with its key points, padded [B, K, ...]."""
        x = tf.cast(tf.reshape(pixels, [per_batch, size, size, 1]), tf.float32) / scale - 1.0
        if params is not None:
            x, points, mask = augment_batch(x, aug_seed, params, points, mask)
        return x, points, classes, mask

    if params is None or (params.rotate_deg == 0 and params.noise_std == 0):
        # XLA fuses the elementwise chain into one pass: 5x faster with the default augmentation on 2
        # CPU cores (measured); its CPU random numbers are slower, so noise and rotation run unfused.
        transform = tf.function(transform, jit_compile=True)
        transform_points = tf.function(transform_points, jit_compile=True)

    point_bytes = MAX_POINTS * 13 if keypoints or labelled_only else 0
    if cache and stored * (size * size * dtype.size + point_bytes) <= memory_budget():
        if keypoints or labelled_only:
            pixels, points, classes, mask, labelled = _load_split(files, size, dtype, stored, keypoints=True)
            if labelled_only:
                keep = np.flatnonzero(labelled)
                pixels, points, classes, mask = pixels[keep], points[keep], classes[keep], mask[keep]
                frames = len(keep)
            points, classes, mask = tf.constant(points), tf.constant(classes), tf.constant(mask)
        else:
            pixels = _load_split(files, size, dtype, stored)
        images = tf.constant(pixels)
        n = tf.constant(frames, tf.int64)
        stop = 2**62 if repeat else frames
        start = pipeline_id + pipelines * per_batch * int(skip_batches)
        ds = tf.data.Dataset.range(start, stop, pipelines).batch(per_batch, drop_remainder=True)

        def lookup(position):
            idx = _epoch_permutations(position, n, seed) if shuffle else position % n
            # Augmentation is keyed by the stream position (a frame recurs every epoch).
            key = tf.stack([tf.constant(seed, tf.int64), position[0]])
            if keypoints:
                return transform_points(
                    tf.gather(images, idx), key, tf.gather(points, idx), tf.gather(classes, idx),
                    tf.gather(mask, idx),
                )  # fmt: skip
            return transform(tf.gather(images, idx), key)

        ds = ds.map(lookup, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        options.experimental_symbolic_checkpoint = True
        return ds.prefetch(tf.data.AUTOTUNE).with_options(options)

    ds = tf.data.Dataset.from_tensor_slices(files)
    shard_records = False
    if pipelines > 1:
        if len(files) >= pipelines:
            ds = ds.shard(pipelines, pipeline_id)
        else:
            shard_records = True
    if len(files) > 1:
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=4 << 20),
            cycle_length=min(len(files), 4),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = tf.data.TFRecordDataset(files[0], buffer_size=4 << 20)
    if shard_records:
        ds = ds.shard(pipelines, pipeline_id)
    if labelled_only:
        ds = ds.filter(_is_labelled)
    record_bytes = size * size * dtype.size + 128
    if shuffle:
        ds = ds.shuffle(
            max(1, min(frames, SHUFFLE_BYTES // record_bytes)), seed=seed, reshuffle_each_iteration=True
        )
    if repeat:
        ds = ds.repeat()
    # The batch number keys augmentation, so it is counted before skipping.
    ds = ds.batch(per_batch, drop_remainder=True).enumerate()
    if skip_batches:
        ds = ds.skip(int(skip_batches))

    def decode(i, serialized):
        key = tf.stack([tf.constant(seed, tf.int64), i])
        if keypoints:
            pixels, points, classes, mask, _ = _parse(serialized, dtype, keypoints=True)
            return transform_points(pixels, key, points, classes, mask)
        parsed = tf.io.parse_example(serialized, {"image": tf.io.FixedLenFeature([], tf.string)})
        pixels = tf.io.decode_raw(parsed["image"], dtype, little_endian=True)
        return transform(pixels, key)

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _epoch_permutations(idx, n, seed: int):
    """Frame of each stream position in `idx` (increasing): position i is frame perm_e[i mod n], where
    perm_e is a full uniform permutation of the split drawn from (seed, e) for epoch e = i // n.

    Not `RandomIndexShuffle`: on small ranges it hardly mixes (positions 0..7 of 464 map to
    253, 252, 255, 254, 445, 248, 251, 250), so a batch held consecutive frames of one cine loop —
    near-identical images, which a GAN's discriminator and batch norm take as the real distribution.
    """
    import tensorflow as tf

    epochs = idx // n
    first = epochs[0]
    count = tf.cast(epochs[-1] - first + 1, tf.int32)  # epochs this batch spans: 1 or 2 unless batch > n
    frames = tf.range(n, dtype=tf.int64)
    seed = tf.constant(seed, tf.int64)
    perms = tf.map_fn(
        lambda e: tf.random.experimental.stateless_shuffle(frames, seed=tf.stack([seed, e])),
        first + tf.range(count, dtype=tf.int64),
        fn_output_signature=tf.int64,
    )
    return tf.gather_nd(perms, tf.stack([epochs - first, idx % n], axis=1))


def labelled_count(manifest: dict, split: str) -> int:
    """Labelled frames of a split as the manifest says (0 for data sets from before key points)."""
    return int((manifest.get("keypoints") or {}).get("labelled_frames", {}).get(split, 0))


def _is_labelled(serialized):
    import tensorflow as tf

    spec = {"labelled": tf.io.FixedLenFeature([], tf.int64, default_value=0)}
    return tf.io.parse_single_example(serialized, spec)["labelled"] > 0


def _parse(serialized, dtype, keypoints: bool = False):
    """A batch of serialized examples → pixels [B, H*W] (+ points [B, K, 2], classes [B, K] int32,
    mask [B, K], labelled [B] with `keypoints`). Shards from before key points read as unlabelled."""
    import tensorflow as tf

    spec = {"image": tf.io.FixedLenFeature([], tf.string)}
    if keypoints:
        spec |= {
            "kp_xy": tf.io.RaggedFeature(tf.float32),
            "kp_class": tf.io.RaggedFeature(tf.int64),
            "labelled": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        }
    parsed = tf.io.parse_example(serialized, spec)
    pixels = tf.io.decode_raw(parsed["image"], dtype, little_endian=True)
    if not keypoints:
        return pixels
    b = tf.shape(pixels)[0]
    xy = parsed["kp_xy"].to_tensor(0.0, shape=[None, 2 * MAX_POINTS])
    points = tf.reshape(xy, [b, MAX_POINTS, 2])
    classes = tf.cast(parsed["kp_class"].to_tensor(0, shape=[None, MAX_POINTS]), tf.int32)
    mask = tf.sequence_mask(parsed["kp_class"].row_lengths(), MAX_POINTS)
    return pixels, points, classes, mask, parsed["labelled"] > 0


def _load_split(files: list[str], size: int, dtype, frames: int, keypoints: bool = False):
    """Every frame of a split, in shard order, as one array (the in-memory mode's source); with
    `keypoints`, also (points, classes, mask, labelled) as numpy arrays."""
    import tensorflow as tf

    out = np.empty((frames, size, size), dtype.as_numpy_dtype)
    if keypoints:
        points = np.zeros((frames, MAX_POINTS, 2), np.float32)
        classes = np.zeros((frames, MAX_POINTS), np.int32)
        mask = np.zeros((frames, MAX_POINTS), bool)
        labelled = np.zeros((frames,), bool)
    j = 0
    for serialized in tf.data.TFRecordDataset(files).batch(512).as_numpy_iterator():
        parsed = _parse(serialized, dtype, keypoints)
        pixels = (parsed[0] if keypoints else parsed).numpy()
        if j + len(pixels) > frames:
            raise DataError(f"shards of {files[0]}'s data set hold more frames than its manifest says")
        out[j : j + len(pixels)] = pixels.reshape(-1, size, size)
        if keypoints:
            k = slice(j, j + len(pixels))
            points[k], classes[k], mask[k], labelled[k] = (t.numpy() for t in parsed[1:])
        j += len(pixels)
    if j != frames:
        raise DataError(f"shards hold {j} frames, the manifest says {frames}: the data set is incomplete")
    return (out, points, classes, mask, labelled) if keypoints else out


def augment_batch(x, seed, params: Augment = Augment(), points=None, mask=None):
    """Augment a batch [B, S, S, 1] in [-1, 1]; per-image parameters from a stateless RNG keyed by `seed`.

    With key points (`points` [B, K, 2], `mask` [B, K]) returns `(x, points, mask)`: flips mirror the
    points exactly as the pixels, rotation turns them about the same centre, and a point rotated off
    the frame is masked off. The images are the same with or without points.
    Works on [B, S, S] internally: TF's CPU reverse is ~3x slower with a trailing channel axis of 1.
    """
    import math

    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=6)
    b = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)
    x = x[..., 0]

    def uniform(i, lo=0.0, hi=1.0):
        return tf.random.stateless_uniform([b], seed=seeds[i], minval=lo, maxval=hi)

    side = int(x.shape[1]) if points is not None else 0  # static: the key points' mirror axis
    if params.flip_lr > 0:
        flip = (uniform(0) < params.flip_lr)[:, None, None]
        x = tf.where(flip, tf.reverse(x, [2]), x)
        if points is not None:
            points = tf.where(flip, flip_lr(points, side), points)
    if params.flip_ud > 0:
        flip = (uniform(1) < params.flip_ud)[:, None, None]
        x = tf.where(flip, tf.reverse(x, [1]), x)
        if points is not None:
            points = tf.where(flip, points * [1.0, -1.0] + [0.0, side - 1.0], points)
    if params.rotate_deg > 0:  # about the centre, reflecting at the borders: values stay in range
        angle = uniform(2, -1.0, 1.0) * (params.rotate_deg * math.pi / 180.0)
        cos, sin = tf.cos(angle), tf.sin(angle)
        c = size - 1.0
        x_off = (c - (cos * c - sin * c)) / 2.0
        y_off = (c - (sin * c + cos * c)) / 2.0
        zeros = tf.zeros_like(cos)
        transforms = tf.stack([cos, -sin, x_off, sin, cos, y_off, zeros, zeros], axis=1)
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=x[..., None],
            transforms=transforms,
            output_shape=tf.shape(x)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )[..., 0]
        if points is not None:
            # The transform maps output pixel p to input R p + offset; a key point goes the other way.
            px = points[..., 0] - x_off[:, None]
            py = points[..., 1] - y_off[:, None]
            c, s = cos[:, None], sin[:, None]
            points = tf.stack([c * px + s * py, c * py - s * px], axis=-1)
            mask = tf.logical_and(mask, tf.reduce_all((points >= -0.5) & (points <= side - 0.5), axis=-1))
    changes_range = params.contrast > 0 or params.brightness > 0 or params.noise_std > 0
    if params.contrast > 0 or params.brightness > 0:
        # One fused affine map per image: (x - mean) * contrast + mean + brightness.
        factor = 1.0 + uniform(3, -params.contrast, params.contrast)
        shift = 2.0 * uniform(4, -params.brightness, params.brightness)
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True) if params.contrast > 0 else 0.0
        x = (x - mean) * factor[:, None, None] + (mean + shift[:, None, None])
    if params.noise_std > 0:
        # Uniform noise of the same standard deviation: a third of the cost of Gaussian on CPU.
        half = 2.0 * params.noise_std * math.sqrt(3.0)
        x = x + tf.random.stateless_uniform(tf.shape(x), seed=seeds[5], minval=-half, maxval=half)
    if changes_range:
        x = tf.clip_by_value(x, -1.0, 1.0)
    if points is not None:
        return x[..., None], points, mask
    return x[..., None]


@dataclass(frozen=True)
class RealSample:
    """Real frames for evaluation with the cine loop of each: frames of one loop are near-identical,
    so metrics group them (the probe's folds, precision/recall's neighbourhoods)."""

    images: np.ndarray  # uint8 [m, S, S]
    loops: np.ndarray  # int64 [m], the loop id the shards carry
    split: str  # the split they came from
    index: np.ndarray  # int64 [m], their positions in that split (shard order)


def real_frames(dataset_dir: str | Path, split: str = "val", n: int = 256, seed: int = 0) -> np.ndarray:
    """uint8 [m, S, S] real frames for evaluation, m = min(n, frames available), a seeded sample
    (`real_sample`'s images)."""
    return real_sample(dataset_dir, split, n, seed).images


def real_sample(
    dataset_dir: str | Path, split: str = "val", n: int = 256, seed: int = 0,
    exclude: RealSample | None = None,
) -> RealSample:
    """A seeded sample of min(n, available) real frames of `split` and their loops, in shard order.

    When `split` holds fewer than `n` frames (small data sets put few patients in val) the train split
    is used instead if it is larger, and a log line says so: metrics on too few frames are noise.
    Frames of `exclude` (another sample) are never drawn again: a floor sample of the train split stays
    disjoint from held-out frames that had to come from train too.
    """
    import tensorflow as tf

    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    counts = {s: int(v["frames"]) for s, v in manifest["splits"].items()}
    if counts.get(split, 0) < n and counts.get("train", 0) > counts.get(split, 0):
        log.info(
            "split %s has %d frames (< %d): using train (%d frames) for real frames",
            split,
            counts.get(split, 0),
            n,
            counts["train"],
        )
        split = "train"
    files = _shard_files(dataset_dir, manifest, split)
    total = counts[split]
    allowed = np.arange(total)
    if exclude is not None and exclude.split == split:
        allowed = np.setdiff1d(allowed, exclude.index)
    keep = np.sort(np.random.default_rng(seed).choice(allowed, size=min(n, len(allowed)), replace=False))
    size, dtype = int(manifest["image_size"]), _dtype(manifest)
    out = np.empty((len(keep), size, size), np.uint8)
    loops = np.empty(len(keep), np.int64)
    features = {"image": tf.io.FixedLenFeature([], tf.string), "loop": tf.io.FixedLenFeature([], tf.int64)}
    ds = tf.data.TFRecordDataset(files).batch(256)
    j = pos = 0
    for serialized in ds.as_numpy_iterator():
        chosen = keep[(keep >= pos) & (keep < pos + len(serialized))] - pos
        if len(chosen):
            parsed = tf.io.parse_example(serialized[chosen], features)
            pixels = tf.io.decode_raw(parsed["image"], dtype, little_endian=True).numpy()
            out[j : j + len(chosen)] = as_uint8(pixels.reshape(-1, size, size))
            loops[j : j + len(chosen)] = parsed["loop"].numpy()
            j += len(chosen)
        pos += len(serialized)
    return RealSample(out[:j], loops[:j], split, keep[:j].astype(np.int64))


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """Stored frames (uint8 or uint16) as uint8, full range to full range."""
    if pixels.dtype == np.uint8:
        return pixels
    scale = 255.0 / float(np.iinfo(pixels.dtype).max)
    return np.rint(pixels.astype(np.float64) * scale).astype(np.uint8)


def labelled_frames(
    dataset_dir: str | Path, split: str = "val", n: int | None = None, seed: int = 0
) -> LabelledFrames:
    """The labelled frames of a split (uint8, whatever is stored) with their key points: all of them, or
    a seeded sample of `n` (in shard order). For the tracker and its evaluation; a `DataError` when the
    split has no labelled frames, or fewer than `n`."""
    import tensorflow as tf

    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    files = _shard_files(dataset_dir, manifest, split)
    available = labelled_count(manifest, split)
    if not available:
        raise DataError(
            f"data set {dataset_dir} has no labelled {split} frames; prepare a source with key points "
            "(COCO files beside the frames, or builtin://phantom)"
        )
    if n is not None and not 0 < n <= available:
        raise DataError(f"data set {dataset_dir} has {available} labelled {split} frames; {n} were asked for")
    pick = (
        np.arange(available)
        if n is None
        else np.sort(np.random.default_rng(seed).choice(available, n, False))
    )
    size, dtype = int(manifest["image_size"]), _dtype(manifest)
    parts: list[tuple] = []
    seen = 0  # labelled frames passed so far
    for serialized in tf.data.TFRecordDataset(files).batch(512).as_numpy_iterator():
        pixels, points, classes, mask, labelled = (t.numpy() for t in _parse(serialized, dtype, True))
        rows = np.flatnonzero(labelled)
        chosen = pick[(pick >= seen) & (pick < seen + len(rows))] - seen
        seen += len(rows)
        if len(chosen):
            r = rows[chosen]
            parts.append((as_uint8(pixels[r].reshape(-1, size, size)), points[r], classes[r], mask[r]))
    if seen != available:
        raise DataError(
            f"shards of {dataset_dir} hold {seen} labelled {split} frames, the manifest says {available}"
        )
    return LabelledFrames(
        *(np.concatenate([p[k] for p in parts]) for k in range(4)), synthetic=bool(manifest.get("synthetic"))
    )
