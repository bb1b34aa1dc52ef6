"""One root for what medsynth keeps on local disk between calls, one folder per kind.

`$MEDSYNTH_CACHE` (default: `<tempdir>/medsynth`, tempdir as Python's `tempfile` finds it) holds:

  work/      runs with a gs:// --out train here, one folder per --out (medsynth.train.outputs)
  runs/      runs read from object storage, for evaluation and export (medsynth.train.checkpoints)
  weights/   pretrained weights, converted or fetched (models.efficientnet_lite, evaluate.fid)
  push/      SavedModels the push step fetched to check before pushing (medsynth.serving.push)
  pipeline/  data sets and runs the pipeline's steps fetch or compare (medsynth.pipeline_steps)

Two kinds keep the variable that named their folder before there was one root, and it still wins:
`MEDSYNTH_WORKDIR` is the `work` folder (a node's own disk, when pods share the temp dir) and
`MEDSYNTH_WEIGHTS_CACHE` the `weights` folder (weights kept across machines). Everything here can be
deleted at any time: it is fetched or computed again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ROOT_ENV = "MEDSYNTH_CACHE"
WORKDIR_ENV = "MEDSYNTH_WORKDIR"
WEIGHTS_ENV = "MEDSYNTH_WEIGHTS_CACHE"
KINDS = {"work": WORKDIR_ENV, "runs": None, "weights": WEIGHTS_ENV, "push": None, "pipeline": None}


def cache_root(kind: str) -> Path:
    """The folder for `kind` (one of KINDS); not created here: whoever writes there creates it."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(KINDS)}")
    override = KINDS[kind]
    if override and os.environ.get(override):
        return Path(os.environ[override])
    return Path(os.environ.get(ROOT_ENV) or Path(tempfile.gettempdir()) / "medsynth") / kind
