"""This process's share of the training batches (see `Feed`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth.train.config import TrainConfig
from medsynth.train.strategy import Distribution

LAYOUTS = 256  # layouts kept for sample grids and the exported model's default requests


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
            data_dir, "train", batch_size=cfg.batch_size, seed=cfg.seed, augment=cfg.augment,
            **_labelled(cfg),
        )
        self.iterator = iter(dataset)

    def __next__(self) -> Any:
        x = next(self.iterator)  # frames, or (frames, points, classes, mask) with --condition keypoints
        per, dist = self.per, self.dist
        if dist.hvd is not None:
            return tf.nest.map_structure(lambda t: t[dist.worker * per : (dist.worker + 1) * per], x)
        if dist.replicas == 1:
            return x

        def mine(ctx: tf.distribute.experimental.ValueContext) -> Any:
            i = ctx.replica_id_in_sync_group
            return tf.nest.map_structure(lambda t: t[i * per : (i + 1) * per], x)

        return dist.strategy.experimental_distribute_values_from_function(mine)

    def __iter__(self) -> Feed:
        return self


def _labelled(cfg: TrainConfig) -> dict[str, bool]:
    """make_dataset's keywords for the frames a run trains on: all, or the labelled ones with their
    key points when G draws frames for given key points."""
    return {"keypoints": True, "labelled_only": True} if cfg.condition == "keypoints" else {}


def layout_bank(
    data_dir: Path, cfg: TrainConfig, n: int = LAYOUTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Key-point layouts of `n` training frames, unaugmented, in the data set's order for the run's
    seed (read apart from the feed, so the feed's batches do not change): (points [n, K, 2], classes
    [n, K], mask [n, K]). The first 16 are the sample grids' layouts; all are the exported model's
    layouts for requests that give none."""
    from medsynth.data.input import make_dataset

    dataset = make_dataset(data_dir, "train", batch_size=n, seed=cfg.seed, augment=False, **_labelled(cfg))
    _, points, classes, mask = next(iter(dataset))
    return points.numpy(), classes.numpy(), mask.numpy()
