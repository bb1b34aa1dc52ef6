"""Which distribution a training process runs under, chosen by name or by what the process can see.

`auto` picks, in this order: Horovod when the process was started by `horovodrun`/`mpirun`
(their rank variables are set), MultiWorkerMirrored when `TF_CONFIG` names several tasks,
Mirrored when several GPUs are visible, else one device. Everything here is `tf.distribute` or
Horovod used as documented; this module only chooses and checks the inputs.

A `Distribution` also answers the questions the loop asks: is this process the chief (the only
one that writes checkpoints, metrics and samples), how many replicas share the global batch, and
which slice of it is this process's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from medsynth.errors import ConfigError

log = logging.getLogger("medsynth")

# Set by horovodrun (Gloo and MPI), Open MPI, MPICH/Intel MPI and Slurm's PMI respectively.
_LAUNCHER_RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host0:2222", "host1:2222"]}, "task": {"type": "worker", "index": 0}}'
)


@dataclass
class Distribution:
    """A strategy plus the facts about this process that the training loop needs."""

    name: str  # one | mirrored | multiworker | horovod
    strategy: tf.distribute.Strategy
    worker: int = 0  # this process's index among the workers (Horovod: its rank)
    workers: int = 1
    local_replicas: int = 1  # replicas (devices) driven by this process
    hvd: Any = field(default=None, repr=False)  # horovod.tensorflow, under Horovod

    @property
    def replicas(self) -> int:
        """Replicas in sync: the number of slices of the global batch."""
        return self.workers * self.local_replicas

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    def check_batch(self, global_batch: int) -> None:
        if global_batch % self.replicas:
            raise ConfigError(
                f"--batch-size {global_batch} does not split over {self.replicas} replicas "
                f"({self.workers} worker(s) x {self.local_replicas} device(s)); "
                f"use a multiple of {self.replicas}"
            )


def launched_by_horovod(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return any(v in env for v in _LAUNCHER_RANK_VARS)


def parse_tf_config(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """TF_CONFIG as a dict, None when unset; a clear ConfigError when it cannot be what TF expects."""
    text = (os.environ if env is None else env).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({e.msg} at char {e.pos}); it should look like {_TF_CONFIG_EXAMPLE}"
        ) from e
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise ConfigError(
            f'TF_CONFIG has no "cluster" of host lists; it should look like {_TF_CONFIG_EXAMPLE}'
        )
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(
            f'TF_CONFIG has no "task" with type and index; it should look like {_TF_CONFIG_EXAMPLE}'
        )
    members = cluster.get(task["type"])
    if not isinstance(members, list) or not isinstance(task["index"], int) or not (
        0 <= task["index"] < len(members)
    ):
        raise ConfigError(
            f"TF_CONFIG task {task['type']}:{task['index']} is not in its cluster "
            f"({ {k: len(v) for k, v in cluster.items()} })"
        )
    return cfg


def _tf_config_workers(cfg: dict[str, Any] | None) -> int:
    if cfg is None:
        return 0
    return sum(len(cfg["cluster"].get(kind, [])) for kind in ("chief", "worker"))


def resolve_strategy_name(name: str, env: dict[str, str] | None = None) -> str:
    """What `auto` means here and now (also checks TF_CONFIG, whatever `name` is)."""
    from medsynth.train.config import STRATEGIES

    if name not in STRATEGIES:
        raise ConfigError(f"unknown --strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    tf_config = parse_tf_config(env)
    if name != "auto":
        return name
    if launched_by_horovod(env):
        return "horovod"
    if _tf_config_workers(tf_config) > 1:
        return "multiworker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "one"


def _pick_gpus(gpus: int | None, visible: list[Any]) -> list[Any]:
    if gpus is None:
        return visible
    if gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {gpus}")
    if gpus > len(visible):
        masked = os.environ.get("CUDA_VISIBLE_DEVICES")
        note = f", CUDA_VISIBLE_DEVICES={masked}" if masked is not None else ""
        raise ConfigError(
            f"--gpus {gpus} asked for more GPUs than this machine shows ({len(visible)} visible{note}); "
            "lower --gpus or request GPUs for the pod"
        )
    return visible[:gpus]


def make_distribution(name: str = "auto", gpus: int | None = None) -> Distribution:
    """Create the strategy. Call before any other TensorFlow op: multi-worker and Horovod set up devices."""
    name = resolve_strategy_name(name)
    physical = tf.config.list_physical_devices("GPU")
    if name == "horovod":
        return _horovod(gpus, physical)
    chosen = _pick_gpus(gpus, physical)
    if name == "one":
        device = "/gpu:0" if chosen else "/cpu:0"
        if chosen and len(chosen) < len(physical):
            tf.config.set_visible_devices(chosen, "GPU")
        return Distribution("one", tf.distribute.OneDeviceStrategy(device))
    if name == "mirrored":
        if chosen:
            devices = [f"/gpu:{i}" for i in range(len(chosen))]
            if len(chosen) < len(physical):
                tf.config.set_visible_devices(chosen, "GPU")
        else:
            # No GPU: every logical CPU device (one, unless a test split the CPU into several).
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices)  # NCCL all-reduce across GPUs by default
        return Distribution("mirrored", strategy, local_replicas=strategy.num_replicas_in_sync)
    if name == "multiworker":
        tf_config = parse_tf_config()
        if tf_config is None:
            raise ConfigError(
                "--strategy multiworker needs TF_CONFIG (the TFJob operator sets it); "
                f"for one machine use mirrored. Example: {_TF_CONFIG_EXAMPLE}"
            )
        if chosen and len(chosen) < len(physical):
            tf.config.set_visible_devices(chosen, "GPU")
        impl = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if chosen
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl)
        )
        resolver = strategy.cluster_resolver
        cluster = tf_config["cluster"]
        order = [("chief", i) for i in range(len(cluster.get("chief", [])))] + [
            ("worker", i) for i in range(len(cluster.get("worker", [])))
        ]
        me = (resolver.task_type, resolver.task_id)
        if me not in order:
            raise ConfigError(f"TF_CONFIG task {me[0]}:{me[1]} is neither chief nor worker; nothing to train")
        workers = len(order)
        local = strategy.num_replicas_in_sync // workers
        return Distribution("multiworker", strategy, order.index(me), workers, local)
    raise ConfigError(f"unknown --strategy {name!r}")  # unreachable: resolve_strategy_name checked it


def _horovod(gpus: int | None, physical: list[Any]) -> Distribution:
    try:
        import horovod.tensorflow as hvd
    except ImportError as e:
        raise ConfigError(
            "--strategy horovod, but horovod is not importable here "
            f"({e}); use the trainer image (images/trainer) or --strategy mirrored/multiworker"
        ) from e
    hvd.init()
    if physical:
        if gpus not in (None, 1):
            raise ConfigError(f"--gpus {gpus} with Horovod: each rank drives one GPU; start one rank per GPU")
        if hvd.local_rank() >= len(physical):
            raise ConfigError(
                f"Horovod local rank {hvd.local_rank()} has no GPU ({len(physical)} visible); "
                "start at most as many ranks per node as it has GPUs"
            )
        gpu = physical[hvd.local_rank()]
        tf.config.experimental.set_memory_growth(gpu, True)
        tf.config.set_visible_devices(gpu, "GPU")
        device = "/gpu:0"
    else:
        device = "/cpu:0"
    return Distribution(
        "horovod", tf.distribute.OneDeviceStrategy(device), worker=hvd.rank(), workers=hvd.size(), hvd=hvd
    )


def stable_sync_batch_norm(model: tf.keras.Model, hvd: Any = None) -> int:
    """Give the model's synchronised BN layers float64 batch statistics; returns how many changed.

    Keras' synchronised BN (2.15) sums x and x² in float32 and takes E[x²] - E[x]², which cancels
    where a channel's mean is large against its spread; the statistics then depend on how the
    batch was summed, and the gradients through them amplify that: measured here, G's gradients
    differed by 1-5 % between one device and two Mirrored replicas (the loss by 1e-5), and a
    two-pass float32 variance still by 1-2 %. With the sums in float64 they agree to < 1e-4 (the
    loss to 1e-6). The sums are reductions of a few values per channel, so float64 costs one cast
    of the activations, not float64 convolutions. Under `tf.distribute` the sums go through the
    replica context's all-reduce (differentiable; what Keras uses); under Horovod, whose ranks
    are each a single replica, through `hvd.allreduce` (what Horovod's SyncBatchNormalization
    does). Only the class of each layer changes: weights, names and checkpoints stay the same.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        is_bn = isinstance(layer, tf.keras.layers.BatchNormalization)
        if is_bn and layer.synchronized and not getattr(layer, "_medsynth_stable", False):
            layer.__class__ = _stable_bn_class(type(layer))
            layer._medsynth_stable = True
            layer._medsynth_hvd = hvd
            changed += 1
    return changed


_BN_CLASSES: dict[type, type] = {}


def _all_reduce_sum(layer: tf.keras.layers.Layer, t: tf.Tensor) -> tf.Tensor:
    hvd = getattr(layer, "_medsynth_hvd", None)
    if hvd is not None:
        return hvd.allreduce(t, op=hvd.Sum)
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return t
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, t)


def _stable_bn_class(base: type) -> type:
    if base in _BN_CLASSES:
        return _BN_CLASSES[base]

    def _sync_calculate_mean_and_var(self, x, reduction_axes, keep_dims, mask=None):  # noqa: ANN001, ANN202
        if mask is not None:  # not used by medsynth's models; keep Keras' own path for it
            return base._sync_calculate_mean_and_var(self, x, reduction_axes, keep_dims, mask=mask)
        with tf.name_scope("moments"):
            y = tf.cast(x, tf.float64)
            local_sum = tf.reduce_sum(y, axis=reduction_axes, keepdims=True)
            local_squares = tf.reduce_sum(tf.square(y), axis=reduction_axes, keepdims=True)
            count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(y), reduction_axes)), tf.float64)
            stacked = tf.stack([local_sum, local_squares, tf.fill(tf.shape(local_sum), count)])
            total = _all_reduce_sum(self, stacked)
            mean = total[0] / total[2]
            variance = tf.maximum(total[1] / total[2] - tf.square(mean), 0.0)
            if not keep_dims:
                mean = tf.squeeze(mean, reduction_axes)
                variance = tf.squeeze(variance, reduction_axes)
            return tf.cast(mean, x.dtype), tf.cast(variance, x.dtype)

    methods = {"_sync_calculate_mean_and_var": _sync_calculate_mean_and_var}
    cls = type(f"Float64Stats{base.__name__}", (base,), methods)
    _BN_CLASSES[base] = cls
    return cls
