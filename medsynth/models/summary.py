"""Parameter counts of G, D and the GAN, beside the paper's Table 3."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from medsynth.errors import ConfigError
from medsynth.models.backbones import build_backbone, get_backbone, normalize_weights
from medsynth.models.discriminator import (
    backbone_of,
    discriminator_from_backbone,
    mode_reason,
    projected_discriminator,
    resolve_head,
    resolve_mode,
)
from medsynth.models.generator import build_generator


class ParamCounts(NamedTuple):
    total: int
    trainable: int
    non_trainable: int

    def __add__(self, other: ParamCounts) -> ParamCounts:  # type: ignore[override]
        return ParamCounts(*(a + b for a, b in zip(self, other, strict=True)))


# Table 3 of the paper: 256 px, Xception backbone, frozen.
PAPER_SIZE, PAPER_BACKBONE = 256, "xception"
PAPER_TABLE3 = {
    "generator": ParamCounts(17_074_528, 17_016_608, 57_920),
    "discriminator": ParamCounts(20_867_624, 2_048, 20_865_576),
    "GAN": ParamCounts(37_942_152, 17_018_656, 20_923_496),
}


def count_params(model: tf.keras.Model) -> ParamCounts:
    """Weights of `model`, split as keras' model.summary() splits them."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return ParamCounts(trainable + non_trainable, trainable, non_trainable)


def _rows(counts: dict[str, ParamCounts]) -> list[str]:
    return [f"  {n:<15}{c.total:>14,}{c.trainable:>14,}{c.non_trainable:>16,}" for n, c in counts.items()]


def summary_table(
    image_size: int = 256,
    backbone: str = "xception",
    backbone_weights: str = "none",
    backbone_mode: str | None = None,
    head: str | None = None,
) -> str:
    """The paper's Table 3 for this build, in the backbone mode the weights imply, and the frozen one.

    Counts do not depend on the weight values, so the backbone is built with
    random weights (nothing is downloaded); `backbone_weights` only decides the
    default mode, as it does in training.
    """
    spec = get_backbone(backbone)
    weights = normalize_weights(backbone_weights)
    head = resolve_head(spec.name, head)
    mode = resolve_mode(weights, backbone_mode, head)
    other = "trainable" if mode == "frozen" else "frozen"

    generator = build_generator(image_size)
    net = build_backbone(spec.name, spec.input_size(image_size), "none")
    own_head = "paper" if head == "projected" else head  # Table 3's (or DCGAN's) head is always counted
    discriminator = discriminator_from_backbone(image_size, spec, net, mode, own_head)
    g = count_params(generator)
    d = {mode: count_params(discriminator)}
    backbone_of(discriminator).trainable = other == "trainable"  # the same weights, counted the other way
    d[other] = count_params(discriminator)

    header = f"  {'':<15}{'total':>14}{'trainable':>14}{'non-trainable':>16}"

    def title(m: str) -> str:
        return f"backbone {m}" + (" (the paper's setting)" if m == "frozen" else "")

    lines = [
        f"Weights of the GAN (the paper's Table 3) at {image_size} px, backbone {spec.paper_name}",
        f"backbone weights: {weights}; {mode_reason(weights, backbone_mode, head)}",
        "(counts do not depend on the weight values; none were loaded)",
        "",
        f"this build, {title(mode)}:" if head != "projected" else f"{own_head} head, {title(mode)}:",
        header,
        *_rows({"generator": g, "discriminator": d[mode], "GAN": g + d[mode]}),
        "",
        f"the same, {title(other)}:",
        header,
        *_rows({"discriminator": d[other], "GAN": g + d[other]}),
        "",
    ]
    try:
        projected = count_params(projected_discriminator(image_size, spec, net))
        this = " (this build)" if head == "projected" else ""
        lines += [
            "projected head (Projected GAN: 4 taps, fixed random channel and scale mixing, one "
            f"spectral-normalised D per scale), backbone frozen{this}:",
            header,
            *_rows({"discriminator": projected, "GAN": g + projected}),
            "",
        ]
    except ConfigError as e:
        lines += [f"projected head: not available for {spec.name} ({e})", ""]
    if image_size == PAPER_SIZE and spec.name == PAPER_BACKBONE:
        ours = {"generator": g, "discriminator": d["frozen"], "GAN": g + d["frozen"]}
        lines += [
            "against the paper (256 px, Xception, backbone frozen):",
            f"  {'':<29}{'this build':>14}{'paper':>14}{'difference':>13}",
        ]
        for name, paper in PAPER_TABLE3.items():
            labels = ("total", "trainable", "non-trainable")
            for mine, theirs, label in zip(ours[name], paper, labels, strict=True):
                diff = 100.0 * (mine - theirs) / theirs
                lines.append(f"  {name + ' ' + label:<29}{mine:>14,}{theirs:>14,}{diff:>+12.3f}%")
        lines += [
            "The discriminator matches exactly. The generator is the seed README's reconstruction of",
            "Table 1 (no natural wiring reproduces all three of the paper's counts; see",
            "medsynth/models/generator.py).",
        ]
    else:
        lines.append(
            "The paper reports 256 px with Xception only; run `medsynth summary --image-size 256 "
            "--backbone xception` to compare with it."
        )
    return "\n".join(lines)
