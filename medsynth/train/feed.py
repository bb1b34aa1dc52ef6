"""This process's share of the training batches (see `Feed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tensorflow as tf

from medsynth.train.config import TrainConfig
from medsynth.train.strategy import Distribution


class Feed:
    """This process's per-replica batches, cut from one global batch stream that every worker reads.

    Reading the whole global batch on each worker and keeping its slices costs decoding (cheap next
    to a GAN step) and buys two things: the numbers do not depend on how many devices share the
    batch, and the input position is the same on every worker, so the chief's checkpoint of
    `iterator` (a plain tf.data iterator: distributed iterators are not checkpointable in TF 2.15)
    resumes them all.
    """

    def __init__(self, dist: Distribution, data_dir: Path, cfg: TrainConfig) -> None:
        from medsynth.data.input import make_dataset

        dist.check_batch(cfg.batch_size)
        self.dist = dist
        self.per = cfg.batch_size // dist.replicas
        dataset = make_dataset(
            data_dir, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment
        )
        self.iterator = iter(dataset)

    def __next__(self) -> Any:
        x = next(self.iterator)
        per, dist = self.per, self.dist
        if dist.hvd is not None:
            return x[dist.worker * per : (dist.worker + 1) * per]
        if dist.replicas == 1:
            return x

        def mine(ctx: tf.distribute.experimental.ValueContext) -> tf.Tensor:
            i = ctx.replica_id_in_sync_group
            return x[i * per : (i + 1) * per]

        return dist.strategy.experimental_distribute_values_from_function(mine)

    def __iter__(self) -> Feed:
        return self
