"""`TrackerConfig`: every option of a tracker run, validated up front and written to its config.json.

No TensorFlow here: the command line builds its flags from these fields."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from medsynth.errors import ConfigError
from medsynth.train.config import SWITCHES, _base_type, _flag, _opt

# Here, not beside the code they choose, so that `medsynth`'s parser reads them without TensorFlow.
LOSSES = ("focal", "bce")  # medsynth.tracker.loss
NORMS = ("batch", "group")  # medsynth.tracker.model
THRESHOLD = 0.3  # bifurcation peaks on the sigmoid heat map (medsynth.tracker.decode)
TOLERANCE = 0.03  # bifurcation match distance, of the side: ~2 px at 64 px (medsynth.tracker.metrics)


@dataclass
class TrackerConfig:
    out: str = field(metadata={"help": "the run's directory; run again with the same --out to resume"})
    steps: int = _opt(2000, "training steps in all, whatever the data (a resumed run continues to this many)")
    batch_size: int = _opt(32)
    # measured on phantom 64 px, 200 steps of 16: tip median error 0.76 px at 1e-3, 0.41 at 3e-3, 0.66 at 1e-2
    lr: float = _opt(3e-3, "learning rate (Adam)")
    seed: int = _opt(0, "seeds the weights, the batches, the augmentation and the --n-real sample")
    synthetic_fraction: float = _opt(
        0.5, "share of each batch drawn from the second source (synthetic or pseudo-labelled frames)"
    )
    pretrain_steps: int = _opt(
        0, "first steps on the second source alone, then the real frames alone (pre-train, fine-tune; 0: mix)"
    )
    augment: bool = _opt(True, "left-right flips (key points flipped too), brightness and contrast")
    rotate_deg: float = _opt(0.0, "with --augment: ± degrees of rotation about the centre (key points too)")
    scale: float = _opt(0.0, "with --augment: ± relative zoom about the centre (points leaving are masked)")
    gamma: float = _opt(0.0, "with --augment: gamma e^u on [0, 1] intensities, u uniform in ± this")
    checkpoint_every: int = _opt(500)
    keep_checkpoints: int = _opt(3, "newest N kept")
    log_every: int = _opt(10, "steps between loss-curve points")
    width: int = _opt(16, "channels of the U-Net's first level (then x2, x4, x4)")
    norm: str = _opt("batch", "the U-Net's normalisation: batch | group", choices=NORMS)
    loss: str = _opt(
        "focal", "focal (CenterNet's penalty-reduced focal loss) | bce (on the Gaussian maps)", choices=LOSSES
    )
    threshold: float = _opt(THRESHOLD, "bifurcation detection threshold on the heat map (sigmoid)")
    tolerance: float = _opt(TOLERANCE, "bifurcation match distance, a fraction of the frame side")
    deterministic: str = _opt(
        "auto", "op determinism for bitwise-exact resume (auto: on CPUs, off on GPUs)", choices=SWITCHES
    )

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(bool(str(self.out).strip()), "the tracker needs --out, the run's directory")
        need(
            not str(self.out).startswith("gs://"),
            f"--out {self.out}: the tracker writes local runs only; train locally and copy the run",
        )
        need(self.steps >= 1, f"--steps must be >= 1, got {self.steps}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(self.lr > 0, f"--lr must be > 0, got {self.lr}")
        need(0 <= self.seed < 2**31, f"--seed must be in 0 .. 2**31-1, got {self.seed}")
        need(
            0.0 <= self.synthetic_fraction <= 1.0,
            f"--synthetic-fraction must be in [0, 1], got {self.synthetic_fraction}",
        )
        need(
            0 <= self.pretrain_steps < self.steps,
            f"--pretrain-steps must be in 0 .. --steps - 1 ({self.steps - 1}), got {self.pretrain_steps}",
        )
        need(0.0 <= self.rotate_deg <= 180.0, f"--rotate-deg must be in [0, 180], got {self.rotate_deg}")
        need(0.0 <= self.scale < 1.0, f"--scale must be in [0, 1), got {self.scale}")
        need(0.0 <= self.gamma <= 2.0, f"--gamma must be in [0, 2], got {self.gamma}")
        need(self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        need(self.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(self.log_every >= 1, f"--log-every must be >= 1, got {self.log_every}")
        need(self.width >= 1, f"--width must be >= 1, got {self.width}")
        need(self.norm in NORMS, f"--norm must be one of {', '.join(NORMS)}, got {self.norm!r}")
        need(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        need(0.0 < self.threshold < 1.0, f"--threshold must be in (0, 1), got {self.threshold}")
        need(0.0 < self.tolerance < 1.0, f"--tolerance must be in (0, 1) of the side, got {self.tolerance}")
        need(
            self.deterministic in SWITCHES,
            f"--deterministic must be one of {', '.join(SWITCHES)}, got {self.deterministic!r}",
        )

    def synthetic_per_batch(self, have_synthetic: bool, step: int | None = None) -> int:
        """How many frames of a batch come from the second source: none without one; with
        `pretrain_steps`, all of a pre-training step's and none after; else `synthetic_fraction`."""
        if not have_synthetic:
            return 0
        if self.pretrain_steps and step is not None:
            return self.batch_size if step < self.pretrain_steps else 0
        return round(self.batch_size * self.synthetic_fraction)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
        """One flag per field (`--batch-size` for batch_size; `--augment/--no-augment`), with its help."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            kw = dict(f.metadata)
            base = _base_type(hints[f.name])
            if base is bool:
                parser.add_argument(
                    _flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, **kw
                )
                continue
            required = f.default is dataclasses.MISSING
            parser.add_argument(
                _flag(f.name), type=base, default=None if required else f.default, required=required, **kw
            )

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> TrackerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrackerConfig:
        """The config a run wrote to config.json (which holds more: the frame side, the data's counts)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
