"""Snapshots that carry everything needed to resume and to judge a run.

A checkpoint holds G, D, both optimizers, the step and the input iterator, so a
resumed run continues exactly where it stopped. Beside the checkpoints,
`model.json` records the model signature: a checkpoint from another model or
image size is refused instead of loaded as garbage.

When the run's `--out` is in object storage, TensorFlow still writes local disk
(its own `gs://` filesystem cannot be pointed at an emulator, DESIGN §3) and
every checkpoint is then uploaded with `medsynth.storage.sync_up`, which writes
each checkpoint's marker after its files. A process that starts on another node
downloads the complete (marked) checkpoints first; half-uploaded ones are never
restored. Old checkpoints are pruned locally by TF's CheckpointManager and in the
bucket here, marker first, so a reader never trusts a half-deleted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from medsynth import storage
from medsynth.cache import cache_root
from medsynth.errors import CheckpointError
from medsynth.storage import atomic_write_json, read_json
from medsynth.train.config import LEGACY_SIGNATURE, TrainConfig

CONFIG_FILE = "config.json"
SIGNATURE_FILE = "model.json"
# A key-point-conditioned run's layouts of training frames (coordinates only): its sample grids' and
# its exported model's default layouts
LAYOUTS_FILE = "keypoint_layouts.json"
PREFIX = "ckpt"
_INDEX_RE = re.compile(rf"^{PREFIX}-(\d+)\.index$")
_GROUP_RE = re.compile(rf"^{PREFIX}-(\d+)$")
# What a signature written before a key existed meant by it (model.json of older runs).
_SIGNATURE_DEFAULTS = {"condition": "none", **LEGACY_SIGNATURE}

log = logging.getLogger("medsynth")


def local_checkpoints(directory: str | Path) -> list[tuple[int, str]]:
    """(step, prefix) of every checkpoint in `directory` whose index file exists, oldest first.

    TF writes a checkpoint's index last (MergeV2Checkpoints), so an index means complete data.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _INDEX_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), str(directory / f"{PREFIX}-{m.group(1)}")))
    return sorted(found)


def pull_checkpoints(remote: str, local_dir: str | Path) -> list[tuple[int, str]]:
    """Download the complete checkpoints at `remote` and make TF's state file name exactly those."""
    local_dir = Path(local_dir)
    storage.sync_down(remote, local_dir)
    found = local_checkpoints(local_dir)
    if found:
        tf.compat.v1.train.update_checkpoint_state(
            str(local_dir), found[-1][1], all_model_checkpoint_paths=[p for _, p in found]
        )
    return found


class RunCheckpoints:
    """One run's checkpoints: save (chief), restore (everyone), sync to object storage, prune."""

    def __init__(
        self,
        run_dir: str | Path,
        signature: dict[str, Any],
        keep: int,
        remote: str | None = None,
        write: bool = True,
        collective: bool = False,
        **objects: Any,
    ) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.signature = signature
        self.keep = keep
        self.remote = remote.rstrip("/") if remote else None
        self.write = write
        self.collective = collective
        self.adopted: str | None = None  # the run whose checkpoint this one started from, if any
        if self.remote:
            pulled = pull_checkpoints(self.remote, self.dir)
            if pulled:
                log.info("downloaded %d checkpoint(s) from %s", len(pulled), self.remote)
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.dir), max_to_keep=keep, checkpoint_name=PREFIX
        )

    def check_signature(self) -> None:
        sig_path = self.dir / SIGNATURE_FILE
        if not sig_path.exists():
            return
        saved = _with_defaults(read_json(sig_path))
        diff = {k: (saved.get(k), v) for k, v in self.signature.items() if saved.get(k) != v}
        if diff:
            what = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            where = self.remote or self.dir
            raise CheckpointError(
                f"checkpoint in {where} was written for another model ({what}); "
                "use a new --out or the original settings"
            )

    def restore_latest(self, init_from: str | None = None, max_step: int | None = None) -> str | None:
        """Restore the newest checkpoint if there is one; refuse one written for another model.

        A run without checkpoints of its own starts from `init_from`'s newest (another run of the
        same model, e.g. the pipeline's comparison run of the winning backbone), so the steps it
        already trained are not trained again; not one past `max_step` (the run's own length).
        """
        latest = self.manager.latest_checkpoint
        if latest is None and init_from:
            latest = self._adopt(init_from, max_step)
        if latest is None:
            return None
        self.check_signature()
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise CheckpointError(f"checkpoint {latest} cannot be restored into this model: {e}") from e
        return latest

    def _adopt(self, run: str, max_step: int | None) -> str | None:
        """The newest complete checkpoint of `run` (local or in object storage), its signature checked."""
        src = f"{str(run).rstrip('/')}/checkpoints"
        if storage.is_gcs(src):
            found = pull_checkpoints(src, _local_run_dir(str(run)) / "checkpoints")
        else:
            found = local_checkpoints(src)
        if not found:
            raise CheckpointError(f"--init-from {run} has no complete checkpoint to start from")
        usable = [f for f in found if max_step is None or f[0] <= max_step]
        if not usable:
            log.info("--init-from %s is past step %d already: training from the start", run, max_step)
            return None
        sig = f"{src}/{SIGNATURE_FILE}"
        saved = _with_defaults(read_json(sig)) if storage.exists(sig) else {}
        diff = sorted(k for k, v in self.signature.items() if saved.get(k) != v)
        if diff:
            raise CheckpointError(
                f"--init-from {run} was trained as another model ({', '.join(diff)} differ); "
                "it can only start a run of the same model"
            )
        self.adopted = str(run)
        return usable[-1][1]

    def save(self, step: int) -> str | None:
        """Write a checkpoint (chief only), upload it with its marker last, prune what keep-N drops."""
        if not self.write:
            if self.collective:  # TF's multi-worker pattern: non-chiefs save too, to a scratch dir
                scratch = tempfile.mkdtemp(prefix=".worker-ckpt-", dir=self.dir.parent)
                try:
                    self.checkpoint.write(str(Path(scratch) / PREFIX))
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            return None
        atomic_write_json(self.dir / SIGNATURE_FILE, self.signature)
        path = self.manager.save(checkpoint_number=step)
        if self.remote:
            storage.sync_up(self.dir, self.remote)
            self._prune_remote()
        return path

    def _prune_remote(self) -> None:
        kept = {Path(p).name for p in self.manager.checkpoints}
        groups: dict[str, list[str]] = {}
        for uri in storage.list_uris(self.remote):
            name = uri[len(self.remote) + 1 :]
            group = name.split(".", 1)[0]
            if "/" not in name and _GROUP_RE.match(group):
                groups.setdefault(group, []).append(uri)
        for group, uris in sorted(groups.items()):
            if group in kept:
                continue
            # The marker goes first: from then on no reader takes the rest for a checkpoint.
            storage.delete_prefix(f"{self.remote}/{group}.{storage.MARKER}")
            for uri in uris:
                storage.delete_prefix(uri)
            log.info("pruned %s/%s (keeping %d)", self.remote, group, self.keep)


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    return {**_SIGNATURE_DEFAULTS, **saved}


def write_layouts(run_dir: str | Path, layouts: tuple[np.ndarray, np.ndarray, np.ndarray], size: int) -> None:
    """Write padded key-point layouts (points, classes, mask) beside the run's checkpoints."""
    from medsynth.data.keypoints import FramePoints

    frames = [FramePoints.from_padded(*one).to_dict() for one in zip(*layouts, strict=True)]
    atomic_write_json(Path(run_dir) / LAYOUTS_FILE, {"image_size": int(size), "layouts": frames})


def read_layouts(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The layouts `write_layouts` wrote (padded to keypoints.MAX_POINTS), or None when the run has none."""
    from medsynth.data.keypoints import FramePoints

    path = f"{str(run_dir).rstrip('/')}/{LAYOUTS_FILE}"
    if not storage.exists(path):
        return None
    padded = [FramePoints.from_dict(d).padded()[:3] for d in read_json(path)["layouts"]]
    return tuple(np.stack(part) for part in zip(*padded, strict=True))  # type: ignore[return-value]


def _saved_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json as the run wrote it: its TrainConfig and what it knew (run id, data set, settings)."""
    path = f"{str(run_dir).rstrip('/')}/{CONFIG_FILE}"
    if not storage.exists(path):
        raise CheckpointError(
            f"{run_dir} is not a training run (no {CONFIG_FILE}); pass the --out of `medsynth train`"
        )
    return read_json(path)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run was trained with."""
    return TrainConfig.from_saved(_saved_config(run_dir))


def _local_run_dir(run_dir: str) -> Path:
    key = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    return cache_root("runs") / key


def restore_generator(generator: tf.keras.Model, prefix: str) -> str:
    """Fill `generator` with what the run samples and ships: G's moving average where the checkpoint
    holds one (medsynth.train.ema), else G itself. Returns which ("generator_ema" or "generator")."""
    names = {name.split("/", 1)[0] for name, _ in tf.train.list_variables(prefix)}
    key = "generator_ema" if "generator_ema" in names else "generator"
    tf.train.Checkpoint(**{key: generator}).restore(prefix).expect_partial()
    return key


def _run_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, prefix) of a run's complete checkpoints, local or downloaded from object storage."""
    if storage.is_gcs(run_dir):
        return pull_checkpoints(f"{run_dir}/checkpoints", _local_run_dir(run_dir) / "checkpoints")
    return local_checkpoints(Path(run_dir) / "checkpoints")


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of a run's complete checkpoints, oldest first."""
    return [step for step, _ in _run_checkpoints(str(run_dir).rstrip("/"))]


def load_generator(run_dir: str | Path, step: int | None = None) -> tuple[tf.keras.Model, dict[str, Any]]:
    """The run's generator with its newest trained weights (or those of checkpoint `step`), and what
    is known about the run.

    `run_dir` is a local run or one in object storage (its complete checkpoints are downloaded).
    """
    from medsynth.train.models import generator_for

    text = str(run_dir).rstrip("/")
    saved = _saved_config(text)
    cfg = TrainConfig.from_saved(saved)
    generator = generator_for(cfg)
    found = dict(_run_checkpoints(text))
    if not found:
        raise CheckpointError(f"{run_dir} has no checkpoint yet; train it first")
    if step is not None and step not in found:
        raise CheckpointError(f"{run_dir} has no checkpoint of step {step} (it has {sorted(found)})")
    latest = found[max(found) if step is None else step]
    weights = restore_generator(generator, latest)
    step = int(latest.rsplit("-", 1)[-1])
    info: dict[str, Any] = {
        "weights": weights,
        "image_size": cfg.image_size,
        "latent_dim": cfg.latent_dim,
        "backbone": cfg.backbone,
        "backbone_weights": cfg.backbone_weights,
        "run_id": saved.get("run_id", Path(text).name),
        "step": step,
        "seed": cfg.seed,
    }
    layouts = read_layouts(text) if cfg.condition != "none" else None
    if layouts is not None:
        info["layouts"] = layouts  # padded arrays: for the export, not for a model card
    metrics_path = f"{text}/metrics.json"
    if storage.exists(metrics_path):
        info["metrics"] = json.loads(storage.read_text(metrics_path))
    return generator, info
