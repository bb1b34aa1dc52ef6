"""The training step's one typed config, validated up front and written beside its outputs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from medsynth.errors import ConfigError

STRATEGIES = ("auto", "one", "mirrored", "multiworker", "horovod")
# auto: bfloat16 on Ampere and newer GPUs, float16 on older ones, off on CPU
PRECISIONS = ("auto", "off", "float16", "bfloat16")
SWITCHES = ("auto", "on", "off")  # auto: on for GPUs, off on CPU
# auto: fused with one replica, synchronised (float64 statistics) with several
BATCH_NORMS = ("auto", "fused", "synchronized")


@dataclass
class TrainConfig:
    data: str
    out: str
    image_size: int = 64
    steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    checkpoint_every: int = 100
    sample_every: int | None = None
    keep_checkpoints: int = 3
    # another run of the same model whose newest checkpoint this run starts from if it has none yet
    init_from: str | None = None
    backbone: str = "xception"
    backbone_weights: str = "imagenet"
    backbone_mode: str | None = None
    d_head: str = "auto"  # paper | projected; auto: the backbone's own (medsynth.models.discriminator)
    loss: str = "auto"  # bce | hinge; auto: hinge for the projected head (as Projected GAN), else bce
    latent_dim: int = 100
    generator_width: int = 8
    generator_norm: str = "batch"
    # Table 1's transposed convolutions as nearest up-sampling + convolution (same weights): measured
    # at 32 px, they cut the checkerboard speckle of the 3x3/2 and the 2-pixel grid of the 1x1/2 layer
    generator_upsampling: str = "resize"
    lr_g: float = 2e-4
    lr_d: float | None = None  # None: 2e-4, or 5e-5 for the projected head (measured: 2e-4 lets it win)
    beta_1: float = 0.5
    # half-life of G's moving average (thousands of images; medsynth.train.ema), sampled, judged and
    # exported in G's place; None: StyleGAN2-ADA's batch·10/32, 0: off (G itself is used)
    g_ema_kimg: float | None = None
    label_smoothing: float = 0.1
    r1_gamma: float = 0.0
    augment: bool = False
    d_augment: str = "auto"  # DiffAugment of everything D sees; auto: medsynth.train.augment's default
    strategy: str = "auto"
    metrics_port: int | None = None
    pushgateway: str | None = None  # host:port of a Prometheus Pushgateway; pushed to at the end
    deterministic: str = "auto"  # op determinism; auto: on for CPUs (exact resume), off on GPUs (XLA)
    log_every: int = 10
    gpus: int | None = None  # None: all visible
    mixed_precision: str = "auto"
    xla: str = "auto"
    batch_norm: str = "auto"

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.steps, int) and self.steps >= 0, f"--steps must be >= 0, got {self.steps}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        need(
            self.image_size >= 8 and math.log2(self.image_size).is_integer(),
            f"--image-size {self.image_size} is not a power of two >= 8 (try 32, 64, 128 or 256)",
        )
        need(self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        need(self.latent_dim >= 1, f"--latent-dim must be >= 1, got {self.latent_dim}")
        need(
            self.strategy in STRATEGIES,
            f"unknown --strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}",
        )
        need(
            self.mixed_precision in PRECISIONS,
            f"unknown --mixed-precision {self.mixed_precision!r}; choose one of {', '.join(PRECISIONS)}",
        )
        need(self.xla in SWITCHES, f"unknown --xla {self.xla!r}; choose one of {', '.join(SWITCHES)}")
        need(
            self.deterministic in SWITCHES,
            f"unknown --deterministic {self.deterministic!r}; choose one of {', '.join(SWITCHES)}",
        )
        need(
            self.batch_norm in BATCH_NORMS,
            f"unknown --batch-norm {self.batch_norm!r}; choose one of {', '.join(BATCH_NORMS)}",
        )
        need(self.gpus is None or self.gpus >= 0, f"--gpus must be >= 0, got {self.gpus}")
        need(self.keep_checkpoints >= 1, f"--keep-checkpoints must be >= 1, got {self.keep_checkpoints}")
        need(
            0.0 <= self.label_smoothing < 0.5,
            f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}",
        )
        need(self.r1_gamma >= 0, f"--r1-gamma must be >= 0, got {self.r1_gamma}")
        if self.g_ema_kimg is None:
            from medsynth.train.ema import default_kimg

            self.g_ema_kimg = default_kimg(self.batch_size)
        need(self.g_ema_kimg >= 0, f"--g-ema-kimg must be >= 0 (0: off), got {self.g_ema_kimg}")
        from medsynth.train.augment import DEFAULT_POLICY, parse_policy

        if self.d_augment is None or str(self.d_augment).strip().lower() == "auto":
            self.d_augment = DEFAULT_POLICY
        parse_policy(self.d_augment)  # unknown transformation: ConfigError naming it
        from medsynth.models.generator import UPSAMPLINGS

        need(
            self.generator_upsampling in UPSAMPLINGS,
            f"--generator-upsampling must be one of {', '.join(UPSAMPLINGS)}, "
            f"got {self.generator_upsampling!r}",
        )
        if self.sample_every is None:
            self.sample_every = max(1, min(self.checkpoint_every, max(self.steps // 10, 1)))
        from medsynth.models.backbones import get_backbone

        get_backbone(self.backbone)  # unknown backbone: ConfigError listing valid names
        from medsynth.models.discriminator import resolve_head, resolve_mode
        from medsynth.train.loss import check_loss

        self.d_head = resolve_head(self.backbone, self.d_head)
        if self.lr_d is None:
            self.lr_d = 5e-5 if self.d_head == "projected" else 2e-4
        need(self.lr_d > 0 and self.lr_g > 0, f"learning rates must be > 0, got {self.lr_g}, {self.lr_d}")
        if self.loss is None or self.loss == "auto":
            self.loss = "hinge" if self.d_head == "projected" else "bce"
        check_loss(self.loss)
        resolve_mode(self.backbone_weights, self.backbone_mode, self.d_head)  # projected + trainable

    def model_signature(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be restorable into this run's models."""
        keys = ("image_size", "latent_dim", "generator_width", "generator_norm", "generator_upsampling",
                "backbone", "backbone_mode", "d_head")
        d = {k: getattr(self, k) for k in keys}
        d["g_ema"] = self.g_ema_kimg > 0  # the checkpoint holds the average or not
        from medsynth.models.discriminator import resolve_mode

        d["backbone_mode"] = resolve_mode(self.backbone_weights, self.backbone_mode, self.d_head)
        return d

    @classmethod
    def from_flags(cls, args: Any) -> TrainConfig:
        """From `medsynth train`'s parsed flags: every field that has a flag of the same name."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def generator_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """`build_generator`'s keyword arguments from a run's config (runs written before an option existed
    get the value they were trained with)."""
    return {
        "latent_dim": cfg["latent_dim"],
        "width": cfg["generator_width"],
        "norm": cfg["generator_norm"],
        "upsampling": cfg.get("generator_upsampling", "transpose"),
    }
