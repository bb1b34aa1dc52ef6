"""Where a run writes: its own directory, or a local working copy mirrored to object storage.

With `--out gs://…` TensorFlow reads and writes local disk only (DESIGN §3): the run trains in a
working directory keyed by `--out`, checkpoints go to the bucket through `RunCheckpoints`, and
`RunOutputs` sends the other files (config, history, samples, TensorBoard) after them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from medsynth import storage
from medsynth.cache import cache_root
from medsynth.storage import atomic_write_text
from medsynth.train.strategy import Distribution

_OUTPUTS_KEPT_LOCAL = ("checkpoints",)


def _local_workdir(out: str, dist: Distribution) -> Path:
    root = cache_root("work")  # MEDSYNTH_WORKDIR, when set, names it (medsynth.cache)
    key = hashlib.sha256(out.encode()).hexdigest()[:16]
    return root / key / (f"worker-{dist.worker}" if dist.workers > 1 else "chief") / "run"


class RunOutputs:
    """Mirror of the run's non-checkpoint files (config, history, samples, TensorBoard) in object storage."""

    def __init__(self, local: Path, remote: str | None) -> None:
        self.local, self.remote = local, remote
        self._sent: dict[str, tuple[int, int]] = {}

    def pull(self, *names: str) -> None:
        if not self.remote:
            return
        for name in names:
            uri = f"{self.remote}/{name}"
            if storage.exists(uri):
                atomic_write_text(self.local / name, storage.read_text(uri))

    def push(self) -> None:
        if not self.remote:
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local).as_posix()
            parts = rel.split("/")
            if parts[0] in _OUTPUTS_KEPT_LOCAL or any(p.startswith(".") for p in parts):  # temp files
                continue
            st = path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
            if self._sent.get(rel) != stamp:
                storage.write_bytes(f"{self.remote}/{rel}", path.read_bytes())
                self._sent[rel] = stamp


def run_outputs(out: str, dist: Distribution) -> tuple[RunOutputs, Path]:
    """The run's outputs (created locally) and the folder that caches its prepared data set.

    `out` is `--out` without a trailing slash. A gs:// bucket that is missing or unreachable fails
    here, before any data is prepared or model built.
    """
    remote = out if storage.is_gcs(out) else None
    if remote:
        run_dir = _local_workdir(out, dist)
        storage.list_uris(f"{remote}/checkpoints")  # an unreachable or missing bucket fails here, clearly
        data_cache = run_dir.parent.parent / "_data"
    else:
        run_dir = Path(out)
        data_cache = run_dir.parent / "_data"
    run_dir.mkdir(parents=True, exist_ok=True)
    return RunOutputs(run_dir, remote), data_cache
