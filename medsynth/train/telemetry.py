"""What a training run reports while it runs: Prometheus, TensorBoard, a history file.

Prometheus names follow DESIGN.md §5 and Prometheus conventions. Each run gets
its own registry so that several runs in one process (tests, the comparison)
never share counters.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

log = logging.getLogger("medsynth")

PUSHGATEWAY_ENV = "MEDSYNTH_PUSHGATEWAY"  # host:port; the --pushgateway flag wins
PUSH_JOB = "medsynth-train"
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Telemetry:
    def __init__(
        self,
        run_dir: str | Path,
        labels: dict[str, str],
        port: int | None = None,
        enabled: bool = True,
        pushgateway: str | None = None,
        grouping: dict[str, str] | None = None,
    ) -> None:
        self.enabled = enabled
        self.pushgateway = pushgateway or os.environ.get(PUSHGATEWAY_ENV) or None
        self.grouping = grouping or {}
        self.labels = labels
        self.registry = CollectorRegistry()
        names = sorted(labels)
        self.steps = Counter(
            "medsynth_train_steps_total", "Adversarial steps done.", names, registry=self.registry
        )
        self.images = Counter(
            "medsynth_train_images_total", "Real images consumed.", names, registry=self.registry
        )
        self.loss = Gauge(
            "medsynth_train_loss", "BCE loss of D and G.", [*names, "model"], registry=self.registry
        )
        self.d_output = Gauge(
            "medsynth_train_d_output",
            "Mean D(x) on real and D(G(z)) on generated frames.",
            [*names, "input"],
            registry=self.registry,
        )
        self.step_seconds = Histogram(
            "medsynth_train_step_seconds",
            "Wall time of one adversarial step.",
            names,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.data_wait = Histogram(
            "medsynth_train_data_wait_seconds",
            "Time spent waiting for input data.",
            names,
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.server = None
        if enabled and port is not None:
            self.server, _ = start_http_server(port, registry=self.registry)
            log.info("Prometheus metrics on :%d/metrics", port)
        self.run_dir = Path(run_dir)
        self.history_path = self.run_dir / "history.jsonl"
        self.writer = tf.summary.create_file_writer(str(self.run_dir / "tensorboard")) if enabled else None

    def step(self, seconds: float, wait: float, images: int) -> None:
        self.steps.labels(**self.labels).inc()
        self.images.labels(**self.labels).inc(images)
        self.step_seconds.labels(**self.labels).observe(seconds)
        self.data_wait.labels(**self.labels).observe(wait)

    def scalars(self, step: int, values: dict[str, float], images_per_s: float) -> None:
        self.loss.labels(**self.labels, model="d").set(values["d_loss"])
        self.loss.labels(**self.labels, model="g").set(values["g_loss"])
        self.d_output.labels(**self.labels, input="real").set(values["d_real"])
        self.d_output.labels(**self.labels, input="fake").set(values["d_fake"])
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in values.items()}, "images_per_s": images_per_s}
        with open(self.history_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        with self.writer.as_default(step=step):
            for k, v in row.items():
                if k != "step":
                    tf.summary.scalar(k, v)

    def samples(self, step: int, images: np.ndarray) -> None:
        if self.enabled:
            with self.writer.as_default(step=step):
                tf.summary.image("samples", (np.asarray(images) + 1.0) / 2.0, max_outputs=16)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        if self.enabled and self.pushgateway:
            try:
                push_to_gateway(self.pushgateway, job=PUSH_JOB, registry=self.registry,
                                grouping_key=self.grouping, timeout=10)
                log.info("pushed metrics to %s (job %s)", self.pushgateway, PUSH_JOB)
            except OSError as e:  # metrics are not worth failing a finished run for
                log.warning("could not push metrics to %s: %s", self.pushgateway, e)
        if self.server is not None:
            self.server.shutdown()


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
