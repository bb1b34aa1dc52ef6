"""The arms of the utility experiment: what each tracker of one (N, seed) learns from.

Every arm trains a tracker with the same steps, batch and seed on the same N labelled real frames;
they differ only in what is added:
- `real`: nothing (the tracker's light augmentation: flips, brightness, contrast). The reference of
  every comparison, and the teacher whose key points label the unlabelled frames.
- `augmented`: classic augmentation on top: rotation, zoom and a gamma curve, key points moved with
  the pixels.
- `self-training`: the unlabelled training frames that `real` labels with confidence, mixed into
  each batch.
- `mixed`: the generator's synthetic frames mixed into each batch (the share is a knob).
- `pretrain-finetune`: the synthetic frames alone for the first steps, then the real frames alone.
- `augmented-mixed`: `mixed` with `augmented`'s classic augmentation (on real and synthetic frames
  alike): whether synthetic frames add to what a practitioner already does, not only to `real`.
"""

from __future__ import annotations

from collections.abc import Iterable

from medsynth.errors import ConfigError

ARMS = ("real", "augmented", "self-training", "mixed", "pretrain-finetune", "augmented-mixed")
REFERENCE = "real"
BASELINES = ("augmented", "self-training")  # what a practitioner tries without a generator
GENERATOR_ARMS = ("mixed", "pretrain-finetune", "augmented-mixed")  # the arms that use synthetic frames
RIVAL = "self-training"  # a synthetic arm must beat it too (and real) to win the verdict

# The `augmented` arm's classic augmentation (TrackerConfig fields): ±15°, ±10 % zoom, gamma e^±0.3.
CLASSIC = {"rotate_deg": 15.0, "scale": 0.1, "gamma": 0.3}


def check_arms(names: Iterable[str]) -> tuple[str, ...]:
    """The arms asked for, in ARMS order; a ConfigError naming an unknown one, or a missing `real`."""
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ConfigError(f"unknown --arms {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    if REFERENCE not in names:
        raise ConfigError(
            f"--arms must include {REFERENCE}: every arm is judged against it, and its tracker labels "
            "the unlabelled frames"
        )
    return tuple(a for a in ARMS if a in names)
