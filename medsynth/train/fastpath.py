"""The step's speed choices for the machine it runs on, each exact up to rounding, each kept only where
it wins (docs/performance.md has the measurements behind every rule).

- `fold_batch_norm`: a frozen feature network runs as a copy with its batch norm folded into the
  convolutions (medsynth.models.folding): fewer ops forward and in G's backward pass. Everywhere.
- `forward_gradients`: the convolutions' input gradients as forward convolutions
  (medsynth.models.layers.forward_gradient_conv). It won 1.5x on AVX2-only CPUs, where TF's
  Conv2DBackpropInput is slow; on AVX-512 CPUs it does not (Zen 4: backprop-input at 0.9-1.0x the
  forward kernel's speed; Zen 5: the step lost), nor under oneDNN's kernels (Zen 3 with oneDNN on:
  the step 0.95x). Rule: CPUs without AVX-512 running Eigen's kernels (oneDNN off: medsynth.cpu).
- `depthwise_forward_gradients`: the same for stride-1 depthwise convolutions, whose CPU
  backprop-input kernel is slower than the forward one (1.3x in fp32, 4-9x in bf16). Rule: CPUs.
- `channel_sums`: convolutions to one output channel (G's last layer, the projected head's logits)
  as a depthwise convolution and a channel sum (medsynth.models.layers.ChannelSumConv2D): oneDNN
  runs a one-channel output at a few GFLOP/s (2.5x faster as depthwise + sum). Rule: CPUs.
- `upsampled_convolutions`: the paper generator's nearest x2 up-sampling and the 3x3 (or 1x1)
  convolution after it as one stride-2 transposed convolution with a 4x4 kernel made from the 3x3
  one (or the 1x1 convolution first): 2.25x (4x) fewer FLOPs, 1.5-1.9x faster
  (medsynth.models.layers.UpsampledConv2D). Rule: CPUs.
- `bfloat16_convolutions`: convolutions and dense layers compute in bfloat16, everything else in
  float32 (medsynth.models.layers.bfloat16_convolutions). oneDNN's bf16 convolutions run 1.3-2.6x
  fp32 alone on AMD Zen 4/5 with AVX512_BF16 (half the fp32 speed on an Intel Xeon with AVX512_BF16
  and no AMX: `bfloat16_wins`), but on the demo's configuration the whole step gained only about
  1.1x on Zen 5, and the FD ratio of its seeds 0-2 left fp32's spread (docs/performance.md). Rule:
  off; bench/train_step.py `--toggle bfloat16_convolutions` measures it on the CPU at hand.
  GPUs get their mixed precision from medsynth.train.devices instead.

Rules, not timings: a resumed run makes the same choices on the same kind of machine, so it computes
what the uninterrupted run would have. `choose` logs the choice in one line, and the run's settings
keep it, so two runs that differ in rounding say why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import tensorflow as tf

from medsynth.cpu import cpu_flags, cpu_vendor, onednn_enabled
from medsynth.models.layers import (
    bfloat16_convolutions,
    use_channel_sums,
    use_forward_gradients,
    use_upsampled_convolutions,
)

log = logging.getLogger("medsynth")

@dataclass(frozen=True)
class FastPath:
    fold_batch_norm: bool = False
    forward_gradients: bool = True  # as the networks are built (medsynth.models.backbones, generator)
    depthwise_forward_gradients: bool = False
    channel_sums: bool = False
    upsampled_convolutions: bool = False
    bfloat16_convolutions: bool = False
    reason: str = ""  # why, for the log line

    def describe(self) -> str:
        """One line: what is on, and why."""
        on = [name for name, value in (
            ("batch norm folded into the frozen features", self.fold_batch_norm),
            ("forward-convolution input gradients", self.forward_gradients),
            ("forward depthwise input gradients", self.depthwise_forward_gradients),
            ("one-channel convolutions as depthwise + sum", self.channel_sums),
            ("up-sampling + convolution as one transposed convolution", self.upsampled_convolutions),
            ("bfloat16 convolutions", self.bfloat16_convolutions)) if value]
        return f"fast path: {', '.join(on) or 'none'}{f' ({self.reason})' if self.reason else ''}"

    def settings(self) -> dict[str, bool]:
        return {"fold_batch_norm": self.fold_batch_norm, "forward_gradients": self.forward_gradients,
                "depthwise_forward_gradients": self.depthwise_forward_gradients,
                "channel_sums": self.channel_sums, "upsampled_convolutions": self.upsampled_convolutions,
                "bfloat16_convolutions": self.bfloat16_convolutions}

    def build_policy(self, policy: str) -> str:
        """The Keras policy to build the networks under (bfloat16 convolutions start from mixed_bfloat16)."""
        return "mixed_bfloat16" if self.bfloat16_convolutions and policy == "float32" else policy

    def apply(self, *models: tf.keras.Model) -> None:
        """Switch `models`' layers (in place; same variables) to this path's gradients and precision
        (built under `build_policy`)."""
        for model in models:
            use_forward_gradients(model, convolutions=self.forward_gradients,
                                  depthwise=self.depthwise_forward_gradients)
            if self.channel_sums:
                use_channel_sums(model, self.depthwise_forward_gradients)
            if self.upsampled_convolutions:
                use_upsampled_convolutions(model)
            if self.bfloat16_convolutions:
                bfloat16_convolutions(model)

    def features(self, features: tf.keras.Model) -> tf.keras.Model:
        """The network that computes a frozen `features` model in the step: a folded copy (built now,
        from its current weights) with this path's layers, or `features` itself."""
        if not self.fold_batch_norm:
            return features
        from medsynth.models.folding import fold_batch_norm

        folded, _ = fold_batch_norm(features)
        self.apply(folded)
        return folded


def bfloat16_wins(flags: set[str], vendor: str) -> bool:
    """Whether oneDNN's bf16 convolutions beat fp32 on this CPU, as measured: AVX512_BF16 on AMD
    (Zen 4: 2.0-2.6x), or AMX (Intel's bf16 matrix unit); not AVX512_BF16 alone on Intel (0.5x)."""
    return "avx512_bf16" in flags and (vendor == "AuthenticAMD" or "amx_bf16" in flags)


def choose(
    mixed_precision: str,
    capability: tuple[int, int] | None,
    frozen_features: bool = True,
    onednn: bool | None = None,
) -> FastPath:
    """The fast path for this machine by the rules of the module docstring, logged in one line.
    `onednn`: whether TensorFlow runs oneDNN's CPU kernels (default: its own answer)."""
    if capability is not None:  # a GPU: cuDNN's kernels, mixed precision from the policy
        fast = FastPath(fold_batch_norm=frozen_features, forward_gradients=False, reason="GPU")
        log.info(fast.describe())
        return fast
    flags, vendor = cpu_flags(), cpu_vendor()
    avx512 = "avx512f" in flags
    onednn = onednn_enabled() if onednn is None else onednn
    bf16 = False  # measured: not inside fp32's quality spread, and little faster (module docstring)
    reasons = [vendor or "CPU", "AVX-512" if avx512 else "no AVX-512",
               "oneDNN" if onednn else "Eigen kernels"]
    if "avx512_bf16" in flags:
        reasons.append("AVX512_BF16" + (", AMX" if "amx_bf16" in flags else ""))
    if mixed_precision != "auto":
        reasons.append(f"--mixed-precision {mixed_precision}")
    fast = FastPath(fold_batch_norm=frozen_features, forward_gradients=not (avx512 or onednn),
                    depthwise_forward_gradients=True, channel_sums=True, upsampled_convolutions=True,
                    bfloat16_convolutions=bf16,
                    reason=", ".join(reasons))
    log.info(fast.describe())
    return fast
