"""Picking a `tf.distribute` strategy by name; `auto` looks at what is visible."""

from __future__ import annotations

import logging

import tensorflow as tf

from medsynth.errors import ConfigError

log = logging.getLogger("medsynth")


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one"
    if name == "one":
        device = gpus[0].name if gpus else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ConfigError(f"--strategy {name!r} is not available in this build; use auto, one or mirrored")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Only the chief writes checkpoints, samples and metrics."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0)
