"""Export a trained generator as a SavedModel that `tensorflow/serving` (and `medsynth serve`) loads.

Signatures (all PNG encoding happens inside the graph, so any TF Serving client gets finished images):

- ``serving_default``: ``z`` float32 ``[n, latent_dim]`` -> ``images`` uint8 ``[n, H, W, 1]`` and
  ``png_bytes`` string ``[n]``. A signature has a fixed set of inputs, so the default takes ``z`` (the
  generator's own input, what a generic TF Serving client expects); the seeded variants are separate
  signatures rather than an optional second input.
- ``generate_from_seed``: ``seed`` int64 ``[n]`` -> the same two outputs. Image ``i`` is generated from
  ``z_i = stateless_normal([latent_dim], seed=[seed_i, 0])`` *as a batch of one*, so an image depends only
  on its own seed: identical bytes whatever else is in the request (batched convolutions differ in the
  last float bit with the batch size, which can flip a uint8 rounding).
- ``png_from_seed``: ``seed`` int64 ``[n]`` -> ``png_bytes`` only. TF Serving's REST API cannot filter
  outputs and a JSON array of pixels costs far more than the model at 256 px, so clients that want files
  ask for PNGs alone (the pixels are in the PNG, losslessly).

A key-point-conditioned generator (`--condition keypoints`) keeps those three and gains two:

- ``keypoints``: ``z`` float32 ``[n, latent_dim]``, ``points`` float32 ``[n, K, 2]``, ``classes`` int32
  ``[n, K]``, ``mask`` int32 ``[n, K]`` (1: the point is there; K = `keypoints.MAX_POINTS`, points in
  pixels of the model's frames, pixel centres at integers, classes index `keypoints.CLASSES`) ->
  ``images`` and ``png_bytes``, each image generated alone, so it depends only on its own inputs.
- ``keypoints_png_from_seed``: ``seed`` int64 ``[n]`` and the same three -> ``png_bytes``, z derived
  from the seed as in ``generate_from_seed`` (what `medsynth generate --keypoints` asks).

Its z- and seed-only signatures draw each frame for a layout of its run's layout bank (key-point
coordinates of up to 256 training frames, nothing else, stored in the SavedModel), chosen by the seed
(``LAYOUT_DERIVATION``) or by a hash of z's bits: a generic TF Serving client still gets frames.

``assets.extra/model_card.json`` says what the model is (synthetic, latent size, image size, backbone,
run, step, metrics, version); ``assets.extra/tf_serving_warmup_requests`` holds one PredictionLog per
signature so that TF Serving runs each graph once before it reports the version AVAILABLE.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import ConfigError, MedsynthError, ServingError
from medsynth.storage import atomic_directory, is_gcs, jsonable

SIGNATURE_Z = "serving_default"
SIGNATURE_SEED = "generate_from_seed"
SIGNATURE_PNG = "png_from_seed"
MODEL_CARD = "assets.extra/model_card.json"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
SIGNATURE_KEYPOINTS = "keypoints"
SIGNATURE_KEYPOINTS_PNG = "keypoints_png_from_seed"
LAYOUT_DERIVATION = (
    "a key-point-conditioned model without key points in the request draws image i for layout "
    "stateless_uniform([], seed=[seed_i, 1], maxval=layouts) of its layout bank (from z: the sum of z_i's "
    "float32 bits, modulo the number of layouts)"
)
SEED_DERIVATION = (
    "image i of a request is generated alone from z_i = tf.random.stateless_normal([latent_dim], "
    "seed=[seed_i, 0]); the medsynth client sends seed_i = seed * 2**32 + k for image k of a run"
)


def export_generator(
    generator: Any,
    model_dir: str | os.PathLike,
    *,
    metadata: dict[str, Any],
    warmup: bool = True,
    layouts: tuple[Any, Any, Any] | None = None,
) -> Path:
    """Write `generator` (z [n, latent] -> [n, S, S, 1] in [-1, 1]) as a servable SavedModel at `model_dir`.

    A key-point-conditioned generator ([z, heat maps] -> frames) needs `layouts`, its run's padded layout
    bank (points, classes, mask), or `metadata["layouts"]` as `load_generator` returns it. The directory
    appears complete or not at all (built under a temp name, renamed into place), because TF Serving
    picks up a version directory the moment it is listed.
    """
    import tensorflow as tf

    metadata = dict(metadata)
    layouts = metadata.pop("layouts", None) if layouts is None else layouts
    metadata.pop("layouts", None)
    latent_dim, image_size, conditional = _generator_dims(generator)
    if conditional and layouts is None:
        raise ServingError(
            "a key-point-conditioned generator is exported with its run's layout bank "
            "(keypoint_layouts.json in the run): export the run with `medsynth export --run`"
        )
    module = _serving_module(generator, latent_dim, image_size, layouts if conditional else None)
    signatures = {
        SIGNATURE_Z: module.from_z.get_concrete_function(),
        SIGNATURE_SEED: module.from_seed.get_concrete_function(),
        SIGNATURE_PNG: module.png_from_seed.get_concrete_function(),
    }
    if conditional:
        signatures[SIGNATURE_KEYPOINTS] = module.from_keypoints.get_concrete_function()
        signatures[SIGNATURE_KEYPOINTS_PNG] = module.png_from_keypoints.get_concrete_function()
    card = model_card(metadata, latent_dim=latent_dim, image_size=image_size,
                      layouts=len(layouts[0]) if conditional else None)
    model_dir = Path(model_dir)
    with atomic_directory(model_dir) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a serving container runs as another user
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        (tmp / "assets.extra").mkdir(exist_ok=True)
        (tmp / MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        if warmup:
            write_warmup_requests(tmp / WARMUP_FILE, metadata.get("model_name", "generator"), latent_dim,
                                  keypoints=conditional)
    return model_dir


def export_random_generator(
    model_dir: str | os.PathLike,
    *,
    image_size: int,
    latent_dim: int = 100,
    width: int = 8,
    norm: str = "batch",
    seed: int = 0,
    metadata: dict[str, Any] | None = None,
    keypoints: bool = False,
) -> Path:
    """Export a generator with random weights: for testing and benchmarking a serving stack, not for use.

    Its model card says `"trained": false`, so it cannot be mistaken for a model that learned anything.
    `keypoints`: a key-point-conditioned one, its layout bank the phantom's first 16 frames.
    """
    import tensorflow as tf

    from medsynth.data.keypoints import CLASSES
    from medsynth.models.generator import build_generator

    tf.keras.utils.set_random_seed(seed)
    generator = build_generator(image_size, latent_dim=latent_dim, width=width, norm=norm,
                                condition_channels=len(CLASSES) if keypoints else 0)
    meta = {"model_name": "generator", "trained": False, "seed": seed, "backbone": None,
            "generator_width": width, "generator_norm": norm, **(metadata or {})}
    return export_generator(generator, model_dir, metadata=meta,
                            layouts=_phantom_layouts(image_size, seed) if keypoints else None)


def _phantom_layouts(size: int, seed: int, n: int = 16) -> tuple[Any, Any, Any]:
    import numpy as np

    from medsynth.data.keypoints import FramePoints
    from medsynth.data.phantom import render_frame

    padded = [FramePoints.from_dict(render_frame(size, seed, i).keypoints).padded()[:3] for i in range(n)]
    return tuple(np.stack(part) for part in zip(*padded, strict=True))  # type: ignore[return-value]


def model_card(
    metadata: dict[str, Any], *, latent_dim: int, image_size: int, layouts: int | None = None
) -> dict[str, Any]:
    """What a reader of the model repository needs to know, always saying the output is synthetic.

    `layouts`: the size of a key-point-conditioned model's layout bank (None: unconditional)."""
    from medsynth import __version__

    card = {k: v for k, v in metadata.items() if v is not None}
    frames = {"images": f"uint8 [n, {image_size}, {image_size}, 1]", "png_bytes": "string [n]"}
    signatures: dict[str, Any] = {
        SIGNATURE_Z: {"inputs": {"z": f"float32 [n, {latent_dim}]"}, "outputs": frames},
        SIGNATURE_SEED: {"inputs": {"seed": "int64 [n]"}, "outputs": frames},
        SIGNATURE_PNG: {"inputs": {"seed": "int64 [n]"}, "outputs": {"png_bytes": "string [n]"}},
    }
    if layouts is not None:
        from medsynth.data.keypoints import CLASSES, MAX_POINTS

        points = {"points": f"float32 [n, {MAX_POINTS}, 2]", "classes": f"int32 [n, {MAX_POINTS}]",
                  "mask": f"int32 [n, {MAX_POINTS}]"}
        signatures[SIGNATURE_KEYPOINTS] = {"inputs": {"z": f"float32 [n, {latent_dim}]", **points},
                                           "outputs": frames}
        signatures[SIGNATURE_KEYPOINTS_PNG] = {"inputs": {"seed": "int64 [n]", **points},
                                               "outputs": {"png_bytes": "string [n]"}}
        card["keypoints"] = {
            "classes": list(CLASSES),
            "max_points": MAX_POINTS,
            "convention": "(x, y) in pixels of the model's frames, pixel centres at integers",
            "layout_bank": int(layouts),
            "layout_derivation": LAYOUT_DERIVATION,
        }
    card.update(
        synthetic=True,
        condition="none" if layouts is None else "keypoints",
        latent_dim=int(latent_dim),
        image_size=int(image_size),
        channels=1,
        signatures=signatures,
        seed_derivation=SEED_DERIVATION,
        exported_by=f"medsynth {__version__}",
        created=card.get("created") or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    return jsonable(card)


def write_warmup_requests(
    path: str | os.PathLike, model_name: str, latent_dim: int, keypoints: bool = False
) -> Path:
    """One PredictRequest per signature, as TF Serving's `--enable_model_warmup` replays them on load."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    requests = {
        SIGNATURE_Z: {"z": np.zeros((1, latent_dim), np.float32)},
        SIGNATURE_SEED: {"seed": np.zeros((1,), np.int64)},
        SIGNATURE_PNG: {"seed": np.zeros((1,), np.int64)},
    }
    if keypoints:
        from medsynth.data.keypoints import FramePoints

        points, classes, mask, _ = FramePoints.empty().padded()
        layout = {"points": points[None], "classes": classes[None], "mask": mask[None].astype(np.int32)}
        requests[SIGNATURE_KEYPOINTS] = {"z": np.zeros((1, latent_dim), np.float32), **layout}
        requests[SIGNATURE_KEYPOINTS_PNG] = {"seed": np.zeros((1,), np.int64), **layout}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for signature, inputs in requests.items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str | os.PathLike) -> list[Any]:
    """The PredictionLog records of a warm-up file (what TF Serving replays)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    logs = []
    for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        log.ParseFromString(record)
        logs.append(log)
    return logs


def _generator_dims(generator: Any) -> tuple[int, int, bool]:
    """(latent size, image side, whether it takes key-point heat maps) of a generator to export."""
    try:
        inputs = generator.inputs
        latent_dim = int(inputs[0].shape[-1])
        out = generator.output_shape
    except (AttributeError, TypeError, IndexError) as e:
        raise ServingError(
            f"cannot export {type(generator).__name__}: need a Keras model with inputs z (and heat maps)"
        ) from e
    if len(out) != 4 or out[1] != out[2] or out[3] != 1:
        raise ServingError(f"generator output shape {out} is not [n, S, S, 1]: cannot export it as images")
    if len(inputs) > 2 or (len(inputs) == 2 and tuple(inputs[1].shape[1:3]) != (out[1], out[2])):
        raise ServingError(f"generator inputs {[tuple(i.shape) for i in inputs]} are neither [z] nor "
                           "[z, heat maps of the frame's size]: cannot export it")
    return latent_dim, int(out[1]), len(inputs) == 2


def _serving_module(
    generator: Any, latent_dim: int, image_size: int, layouts: tuple[Any, Any, Any] | None = None
) -> Any:
    import numpy as np
    import tensorflow as tf

    from medsynth.data.keypoints import CLASSES, MAX_POINTS, heatmaps

    def layout_spec() -> list[tf.TensorSpec]:
        return [tf.TensorSpec([None, MAX_POINTS, 2], tf.float32, name="points"),
                tf.TensorSpec([None, MAX_POINTS], tf.int32, name="classes"),
                tf.TensorSpec([None, MAX_POINTS], tf.int32, name="mask")]

    class ServingModule(tf.Module):
        """Holds only the generator's variables, the layout bank, and the signature functions.

        The Keras object itself is not saved, so loading needs no Keras classes (nor tensorflow_addons):
        `tf.saved_model.load` sees variables and graphs.
        """

        def __init__(self) -> None:
            super().__init__(name="medsynth_generator")
            # Only the variables are tracked; the model is reached through the closure while tracing.
            self.generator_variables = list(generator.variables)
            if layouts is not None:  # coordinates of training layouts: nothing else of the frames
                points, classes, mask = (np.asarray(a) for a in layouts)
                self.layout_points = tf.Variable(points.astype(np.float32), trainable=False)
                self.layout_classes = tf.Variable(classes.astype(np.int32), trainable=False)
                self.layout_mask = tf.Variable(mask.astype(np.int32), trainable=False)

        def _images(self, z: tf.Tensor, maps: tf.Tensor | None = None) -> tf.Tensor:
            x = generator(z if maps is None else [z, maps], training=False)
            return tf.cast(tf.clip_by_value(tf.round((x + 1.0) * 127.5), 0.0, 255.0), tf.uint8)

        def _outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            png = tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.TensorSpec([], tf.string))
            return {"images": images, "png_bytes": png}

        def _maps(self, points: tf.Tensor, classes: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
            return heatmaps(points, classes, tf.not_equal(mask, 0), image_size)

        def _bank(self, index: tf.Tensor) -> tf.Tensor:
            """Heat maps of the bank's layouts `index` [n]."""
            pick = lambda v: tf.gather(v, index)  # noqa: E731
            return self._maps(pick(self.layout_points), pick(self.layout_classes), pick(self.layout_mask))

        def _z_of(self, s: tf.Tensor) -> tf.Tensor:
            return tf.random.stateless_normal([1, latent_dim], seed=tf.stack([s, tf.zeros([], tf.int64)]))

        def _layout_of(self, s: tf.Tensor) -> tf.Tensor:
            n = tf.shape(self.layout_points, out_type=tf.int64)[0]
            return tf.random.stateless_uniform([1], seed=tf.stack([s, tf.ones([], tf.int64)]), maxval=n,
                                               dtype=tf.int64)

        def _images_from_seed(self, seed: tf.Tensor) -> tf.Tensor:
            def one(s: tf.Tensor) -> tf.Tensor:
                maps = None if layouts is None else self._bank(self._layout_of(s))
                return self._images(self._z_of(s), maps)[0]

            return tf.map_fn(one, seed, fn_output_signature=tf.uint8, parallel_iterations=8)

        def _images_for_layouts(self, z: tf.Tensor, points: tf.Tensor, classes: tf.Tensor,
                                mask: tf.Tensor) -> tf.Tensor:
            """Each image alone (a batch of one): it depends on its own inputs only."""
            present = tf.not_equal(mask, 0)
            known = tf.where(present, classes, 0)
            which = "classes must be " + " or ".join(f"{i} ({c})" for i, c in enumerate(CLASSES))
            checks = [
                tf.debugging.assert_all_finite(points, "points must be finite (no NaN or infinity)"),
                tf.debugging.assert_greater_equal(known, 0, message=which),
                tf.debugging.assert_less(known, len(CLASSES), message=which),
            ]
            with tf.control_dependencies(checks):
                maps = self._maps(points, classes, mask)

            def one(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
                return self._images(args[0][None], args[1][None])[0]

            return tf.map_fn(one, (z, maps), fn_output_signature=tf.uint8, parallel_iterations=8)

        @tf.function(input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="z")])
        def from_z(self, z: tf.Tensor) -> dict[str, tf.Tensor]:
            # TF Serving passes NaN through to the graph: refuse it here, an INVALID_ARGUMENT there too.
            z = tf.debugging.assert_all_finite(z, "z must be finite (no NaN or infinity)")
            if layouts is None:
                return self._outputs(self._images(z))
            bits = tf.reduce_sum(tf.cast(tf.bitcast(z, tf.int32), tf.int64), axis=1)
            index = tf.math.floormod(bits, tf.shape(self.layout_points, out_type=tf.int64)[0])
            return self._outputs(self._images(z, self._bank(index)))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed")])
        def from_seed(self, seed: tf.Tensor) -> dict[str, tf.Tensor]:
            return self._outputs(self._images_from_seed(seed))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed")])
        def png_from_seed(self, seed: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"png_bytes": self.from_seed(seed)["png_bytes"]}  # one graph for both seed signatures

        if layouts is not None:

            @tf.function(input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="z"),
                                          *layout_spec()])
            def from_keypoints(self, z: tf.Tensor, points: tf.Tensor, classes: tf.Tensor,
                               mask: tf.Tensor) -> dict[str, tf.Tensor]:
                z = tf.debugging.assert_all_finite(z, "z must be finite (no NaN or infinity)")
                return self._outputs(self._images_for_layouts(z, points, classes, mask))

            @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="seed"), *layout_spec()])
            def png_from_keypoints(self, seed: tf.Tensor, points: tf.Tensor, classes: tf.Tensor,
                                   mask: tf.Tensor) -> dict[str, tf.Tensor]:
                z = tf.map_fn(lambda s: self._z_of(s)[0], seed, fn_output_signature=tf.float32)
                images = self._images_for_layouts(z, points, classes, mask)
                return {"png_bytes": self._outputs(images)["png_bytes"]}

    return ServingModule()


# --- export of a training run into a model repository ------------------------------------------------
@dataclass
class ExportConfig:
    """`medsynth export`: which run, into which repository, under which name and version."""

    run: str
    model_repository: str
    model_name: str = "generator"
    version: int | None = None  # default: one more than the newest version in the repository
    warmup: bool = True


def export_run(cfg: ExportConfig) -> Path | str:
    """Export the trained generator of `cfg.run` to `<model_repository>/<model_name>/<version>/`.

    Local repositories get the directory by rename; `gs://` ones are built locally and published with
    `medsynth.storage` (upload, then the completion marker). Re-exporting the same run and step to an
    existing version is a no-op; any other clash is an error.
    """
    from medsynth.train.checkpoints import load_generator

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", cfg.model_name or ""):
        raise ConfigError(f"--model-name {cfg.model_name!r}: use letters, digits, '_', '.', '-'")
    if cfg.version is not None and cfg.version < 1:
        raise ConfigError(f"--version {cfg.version}: TF Serving versions are positive integers")
    generator, info = load_generator(cfg.run)
    base = _join(cfg.model_repository, cfg.model_name)
    existing = list_versions(base)
    version = cfg.version if cfg.version is not None else (max(existing, default=0) + 1)
    target = _join(base, str(version))
    metadata = {
        "model_name": cfg.model_name,
        "version": version,
        "backbone": info.get("backbone"),
        "run": str(cfg.run),
        "run_id": info.get("run_id"),
        "step": info.get("step"),
        "seed": info.get("seed"),
        "metrics": info.get("metrics"),
        "training_image_size": info.get("image_size"),
    }
    if version in existing:
        card = _existing_card(target)
        if card and card.get("run_id") == info.get("run_id") and card.get("step") == info.get("step"):
            return Path(target) if not is_gcs(target) else target
        raise ConfigError(
            f"{target} already holds another model (run {card.get('run_id') if card else '?'}); "
            "omit --version to export as the next version"
        )
    layouts = info.get("layouts")  # a key-point-conditioned run's layout bank
    if not is_gcs(target):
        return export_generator(generator, target, metadata=metadata, warmup=cfg.warmup, layouts=layouts)
    from medsynth import storage

    with tempfile.TemporaryDirectory(prefix="medsynth-export-") as tmp:
        local = export_generator(generator, Path(tmp) / str(version), metadata=metadata, warmup=cfg.warmup,
                                 layouts=layouts)
        storage.publish_dir(local, target)
    return target


def list_versions(base: str | os.PathLike) -> list[int]:
    """Integer version directories under a model's base path (local or gs://), as TF Serving sees them."""
    base = str(base)
    if is_gcs(base):
        from medsynth import storage

        names = {u.rstrip("/")[len(base.rstrip("/")) + 1 :].split("/", 1)[0] for u in storage.list_uris(base)}
    else:
        p = Path(base)
        names = {c.name for c in p.iterdir() if c.is_dir()} if p.is_dir() else set()
    return sorted(int(n) for n in names if n.isdigit() and int(n) > 0)


def _existing_card(target: str) -> dict[str, Any] | None:
    from medsynth import storage

    try:
        card = storage.read_json(f"{target.rstrip('/')}/{MODEL_CARD}")
    except MedsynthError:  # a version without a readable card is "another model"
        return None
    return card if isinstance(card, dict) else None


def _join(base: str | os.PathLike, name: str) -> str:
    base = str(base)
    return f"{base.rstrip('/')}/{name}" if is_gcs(base) else str(Path(base) / name)



__all__ = [
    "ExportConfig",
    "MODEL_CARD",
    "SIGNATURE_KEYPOINTS",
    "SIGNATURE_KEYPOINTS_PNG",
    "SIGNATURE_PNG",
    "SIGNATURE_SEED",
    "SIGNATURE_Z",
    "WARMUP_FILE",
    "export_generator",
    "export_random_generator",
    "export_run",
    "list_versions",
    "model_card",
    "read_warmup_requests",
    "write_warmup_requests",
]
