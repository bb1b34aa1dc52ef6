"""Snapshots that carry everything needed to resume and to judge a run.

A checkpoint holds G, D, both optimizers, the step and the input iterator, so a
resumed run continues exactly where it stopped. Beside the checkpoints,
`model.json` records the model signature: a checkpoint from another model or
image size is refused instead of loaded as garbage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tensorflow as tf

from medsynth.errors import CheckpointError
from medsynth.storage import atomic_write_json, read_json

CONFIG_FILE = "config.json"
SIGNATURE_FILE = "model.json"


class RunCheckpoints:
    def __init__(self, run_dir: str | Path, signature: dict[str, Any], keep: int, **objects: Any) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.signature = signature
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(self.dir), max_to_keep=keep)

    def restore_latest(self) -> str | None:
        """Restore the newest checkpoint if there is one; refuse one written for another model."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return None
        sig_path = self.dir / SIGNATURE_FILE
        if sig_path.exists():
            saved = read_json(sig_path)
            diff = {k: (saved.get(k), v) for k, v in self.signature.items() if saved.get(k) != v}
            if diff:
                what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
                raise CheckpointError(
                    f"checkpoint in {self.dir} was written for another model ({what}); "
                    "use a new --out or the original settings"
                )
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(f"checkpoint {latest} cannot be restored into this model: {e}") from e
        return latest

    def save(self, step: int) -> str:
        atomic_write_json(self.dir / SIGNATURE_FILE, self.signature)
        return self.manager.save(checkpoint_number=step)


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(
            f"{run_dir} is not a training run (no {CONFIG_FILE}); pass the --out of `medsynth train`"
        )
    return read_json(path)


def load_generator(run_dir: str | Path) -> tuple[tf.keras.Model, dict[str, Any]]:
    """The run's generator with its newest trained weights, and what is known about the run."""
    from medsynth.models.generator import build_generator

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    generator = build_generator(
        cfg["image_size"],
        latent_dim=cfg["latent_dim"],
        width=cfg["generator_width"],
        norm=cfg["generator_norm"],
    )
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    if latest is None:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first")
    tf.train.Checkpoint(generator=generator).restore(latest).expect_partial()
    step = int(latest.rsplit("-", 1)[-1])
    info: dict[str, Any] = {
        "image_size": cfg["image_size"],
        "latent_dim": cfg["latent_dim"],
        "backbone": cfg["backbone"],
        "backbone_weights": cfg["backbone_weights"],
        "run_id": cfg.get("run_id", run_dir.name),
        "step": step,
        "seed": cfg["seed"],
    }
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        info["metrics"] = json.loads(metrics_path.read_text())
    return generator, info
