"""Version 0 of a model repository: what TF Serving serves before the pipeline has pushed a generator.

TF Serving opens its ports only once every model of its config has a version AVAILABLE
(`ServerCore` waits for `ServableRequest::Latest(name)` before the server starts), so on an empty
`models/generator/` it never listens: probes fail, the Deployment never rolls out. The deployment
therefore publishes this placeholder when the repository holds no version at all (k8s/serving's
Job): a SavedModel with the generator's signature names whose every call fails with one clear line,
so the server starts, is Ready (the readiness probe's metadata call succeeds) and answers requests
with that line until `push` publishes version 1, which TF Serving's "latest" policy then serves.

Usage: `python -m medsynth.serving.placeholder --model-repository gs://BUCKET/models` (and
`--model-name`, default generator). Idempotent: a repository with any version is left alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from medsynth import storage
from medsynth.errors import MedsynthError

PLACEHOLDER_VERSION = 0  # below every version push writes (1, 2, ...): the first push supersedes it
MESSAGE = "no generator has been published to this model repository yet (placeholder version 0)"


def has_any_version(model_root: str) -> bool:
    """Whether TF Serving would find a version under `model_root` (an integer directory, 0 included)."""
    from medsynth.serving.export import list_versions

    placeholder = f"{model_root}/{PLACEHOLDER_VERSION}/saved_model.pb"
    return bool(list_versions(model_root)) or storage.exists(placeholder)


def export_placeholder(model_dir: str | Path) -> Path:
    """A SavedModel whose signatures take what the generator's take by name, and refuse with MESSAGE."""
    import tensorflow as tf

    from medsynth.serving.export import SIGNATURE_PNG, SIGNATURE_SEED, SIGNATURE_Z

    def refuse(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        tf.debugging.Assert(tf.constant(False), [tf.constant(MESSAGE)])
        return {"png_bytes": tf.fill(tf.shape(batch)[:1], "")}

    class Placeholder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="z")])
        def from_z(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
            return refuse(z)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed")])
        def from_seed(self, seed: tf.Tensor) -> dict[str, tf.Tensor]:
            return refuse(seed)

    module = Placeholder()
    seed = module.from_seed.get_concrete_function()
    signatures = {SIGNATURE_Z: module.from_z.get_concrete_function(), SIGNATURE_SEED: seed,
                  SIGNATURE_PNG: seed}
    tf.saved_model.save(module, str(model_dir), signatures=signatures)
    return Path(model_dir)


def publish_placeholder(model_repository: str, model_name: str) -> str | None:
    """Publish version 0 under `<model_repository>/<model_name>` unless a version exists; its URI, or None."""
    from medsynth.serving.push import publish_version

    model_root = f"{str(model_repository).rstrip('/')}/{model_name}"
    if has_any_version(model_root):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        staged = export_placeholder(Path(tmp) / str(PLACEHOLDER_VERSION))
        if storage.is_gcs(model_root):
            return publish_version(staged, model_root, PLACEHOLDER_VERSION)
        target = f"{model_root}/{PLACEHOLDER_VERSION}"
        with storage.atomic_directory(target) as out:
            shutil.copytree(staged, out, dirs_exist_ok=True)
        return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medsynth.serving.placeholder",
                                description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", required=True, help="gs://BUCKET/models, or a local directory")
    p.add_argument("--model-name", default="generator")
    args = p.parse_args(argv)
    try:
        where = publish_placeholder(args.model_repository, args.model_name)
    except MedsynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"published the placeholder as {where}" if where else
          f"{args.model_repository}/{args.model_name} already has a version: nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
