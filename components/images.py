"""The container images every KFP component and Kubernetes manifest runs on.

One place for image references, so the pipeline, `make images` and `k8s/`
cannot drift apart. Images are tagged with the package version (never
`latest`): a compiled pipeline names exactly the code it was built from.

The registry comes from `MEDSYNTH_REGISTRY` when the pipeline is compiled;
the default is a placeholder that fails loudly on a cluster rather than
pulling someone else's image. Set it and recompile
(`MEDSYNTH_REGISTRY=us-docker.pkg.dev/my-project/medsynth medsynth compile`).
"""

from __future__ import annotations

import os
import re

from medsynth import __version__
from medsynth.errors import ConfigError

REGISTRY_ENV = "MEDSYNTH_REGISTRY"
# Artifact Registry layout: LOCATION-docker.pkg.dev/PROJECT/REPOSITORY. Kept in step with k8s/ and docs.
DEFAULT_REGISTRY = "us-docker.pkg.dev/YOUR_PROJECT/medsynth"

# TF Serving has no stable 2.15.0 image on Docker Hub (2.15.0-rc0, then 2.15.1); 2.15.1 matches
# tensorflow-serving-api==2.15.1 in pyproject.toml.
SERVING_IMAGE = "tensorflow/serving:2.15.1"

# The image names `make images` builds, relative to the registry (images/<name>/Dockerfile).
IMAGE_NAMES = ("base", "trainer")

# host[:port]/path segments, lower case, as registries accept them; no tag, no digest, no scheme.
_REGISTRY_RE = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+$")


def registry(env: dict[str, str] | None = None) -> str:
    """The registry prefix for medsynth's own images, validated so a typo fails at compile time."""
    value = (os.environ if env is None else env).get(REGISTRY_ENV, "").strip().rstrip("/")
    if not value:
        return DEFAULT_REGISTRY
    if not _REGISTRY_RE.match(value):
        raise ConfigError(
            f"{REGISTRY_ENV}={value!r} is not a registry prefix; expected something like "
            f"'us-docker.pkg.dev/my-project/medsynth' (no scheme, no tag, lower case)"
        )
    return value


def image(name: str, env: dict[str, str] | None = None) -> str:
    """Full reference of one of medsynth's images, tagged with the package version."""
    if name not in IMAGE_NAMES:
        raise ConfigError(f"unknown image {name!r}; medsynth builds {', '.join(IMAGE_NAMES)}")
    return f"{registry(env)}/{name}:{__version__}"


# CPU steps: prepare, evaluate, compare, export, push (images/base/Dockerfile).
BASE_IMAGE = image("base")
# GPU training, single pod or MPIJob/TFJob (images/trainer/Dockerfile): TF 2.15 GPU, NCCL, Horovod.
TRAINER_IMAGE = image("trainer")
