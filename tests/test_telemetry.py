"""Seeing a run train: the metrics endpoint, TensorBoard, the Pushgateway, and a real Prometheus scrape.

The integration tests start Debian's `prometheus` and `prometheus-pushgateway` binaries (CI installs
them: `apt-get install -y prometheus prometheus-pushgateway`); outside CI a machine without them
skips with the reason, in CI their absence fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"backbone": "mobilenet"}


def _binary(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed; CI must `apt-get install -y {package}`")
        pytest.skip(f"{name} is not installed (apt-get install -y {package}); CI runs this test")
    return path


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _wait_http(url: str, proc: subprocess.Popen, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}")
        try:
            _get(url, timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"{what} did not answer on {url} in {seconds} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- in process ------------------------------------------------------------------------------------


def test_metrics_endpoint_history_and_tensorboard(tmp_path):
    from medsynth.train.telemetry import Telemetry, read_history

    port = free_port()
    t = Telemetry(tmp_path, LABELS, port=port)
    try:
        for _ in range(3):
            t.step(0.2, 0.01, 8)
        t.scalars(3, {"d_loss": 1.25, "g_loss": 0.75, "d_real": 0.6, "d_fake": 0.3}, images_per_s=40.0)
        t.samples(3, np.zeros((4, 8, 8, 1), np.float32))
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        t.close()
    assert 'medsynth_train_steps_total{backbone="mobilenet"} 3.0' in text
    assert 'medsynth_train_images_total{backbone="mobilenet"} 24.0' in text
    assert 'medsynth_train_loss{backbone="mobilenet",model="d"} 1.25' in text
    assert 'medsynth_train_d_output{backbone="mobilenet",input="fake"} 0.3' in text
    assert 'medsynth_train_step_seconds_bucket{backbone="mobilenet",le="0.25"} 3.0' in text
    assert 'medsynth_train_data_wait_seconds_count{backbone="mobilenet"} 3.0' in text
    assert read_history(tmp_path) == [
        {"step": 3, "d_loss": 1.25, "g_loss": 0.75, "d_real": 0.6, "d_fake": 0.3, "images_per_s": 40.0}
    ]
    tags = _tensorboard_tags(tmp_path / "tensorboard")
    assert {"d_loss", "g_loss", "d_real", "d_fake", "images_per_s", "samples"} <= tags


def _tensorboard_tags(logdir: Path) -> set[str]:
    import tensorflow as tf

    tags = set()
    for f in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(f)):
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_a_non_chief_serves_and_writes_nothing(tmp_path):
    from medsynth.train.telemetry import Telemetry

    t = Telemetry(tmp_path, LABELS, port=None, enabled=False)
    t.step(0.1, 0.0, 4)
    t.scalars(1, {"d_loss": 1.0, "g_loss": 1.0, "d_real": 0.5, "d_fake": 0.5}, 1.0)
    t.close()
    assert list(tmp_path.iterdir()) == []


# --- Pushgateway -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_are_pushed_to_the_pushgateway_at_the_end(tmp_path):
    from medsynth.train.telemetry import Telemetry

    exe = _binary("prometheus-pushgateway", "prometheus-pushgateway")
    port = free_port()
    gw = subprocess.Popen(
        [exe, f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/ready", gw, "pushgateway")
        t = Telemetry(tmp_path, LABELS, pushgateway=f"127.0.0.1:{port}", grouping={"run": "r7"})
        t.step(0.1, 0.0, 16)
        t.close()
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        _stop(gw)
    line = [ln for ln in text.splitlines() if ln.startswith("medsynth_train_images_total{")]
    assert line and 'job="medsynth-train"' in line[0] and 'run="r7"' in line[0] and line[0].endswith(" 16")


def test_an_unreachable_pushgateway_does_not_fail_the_run(tmp_path, caplog):
    from medsynth.train.telemetry import Telemetry

    t = Telemetry(tmp_path, LABELS, pushgateway=f"127.0.0.1:{free_port()}")
    t.step(0.1, 0.0, 1)
    t.close()
    assert "could not push metrics" in caplog.text


# --- a real Prometheus scraping a real run ------------------------------------------------------------


@pytest.mark.slow
def test_prometheus_scrapes_a_training_run(tmp_path):
    from medsynth.data.prepare import PrepareConfig, prepare

    exe = _binary("prometheus", "prometheus")
    data = prepare(
        PrepareConfig(source="builtin://phantom", out=str(tmp_path / "d"), image_size=32, phantom_frames=24)
    )
    metrics_port, prom_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {  # YAML is a superset of JSON
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "medsynth-train",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    prom = subprocess.Popen(
        [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "runs/r/x"
    train = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medsynth.cli",
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--steps",
            "100000",
            "--checkpoint-every",
            "100000",
            "--backbone",
            "mobilenet",
            "--backbone-weights",
            "none",
            "--backbone-mode",
            "frozen",
            "--latent-dim",
            "16",
            "--generator-width",
            "2",
            "--log-every",
            "1",
            "--metrics-port",
            str(metrics_port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_http(f"{api}/status/buildinfo", prom, "prometheus")

        def query(q: str) -> list[dict]:
            body = json.loads(_get(f"{api}/query?{urllib.parse.urlencode({'query': q})}"))
            assert body["status"] == "success", body
            return body["data"]["result"]

        deadline = time.monotonic() + 900
        steps = 0.0
        while time.monotonic() < deadline and steps < 5:
            if train.poll() is not None:
                pytest.fail(f"training exited with {train.returncode}: {train.stderr.read()[-3000:]}")
            result = query('medsynth_train_steps_total{job="medsynth-train"}')
            steps = float(result[0]["value"][1]) if result else 0.0
            time.sleep(1)
        assert steps >= 5, "Prometheus never saw 5 training steps"
        assert result[0]["metric"]["backbone"] == "mobilenet"
        # Every series of DESIGN §5, as Prometheus stored it.
        assert {r["metric"]["model"] for r in query("medsynth_train_loss")} == {"d", "g"}
        assert {r["metric"]["input"] for r in query("medsynth_train_d_output")} == {"real", "fake"}
        images = float(query("medsynth_train_images_total")[0]["value"][1])
        assert images >= 4 * 5
        assert float(query("medsynth_train_step_seconds_count")[0]["value"][1]) >= 5
        assert query("medsynth_train_data_wait_seconds_bucket")
        rate = query("rate(medsynth_train_images_total[10s])")
        assert rate and float(rate[0]["value"][1]) > 0  # images/s, as a dashboard computes it
        up = query('up{job="medsynth-train"}')
        assert up and up[0]["value"][1] == "1"
    finally:
        if train.poll() is None:
            train.send_signal(signal.SIGTERM)  # preemption path: checkpoint, exit 143
            try:
                assert train.wait(timeout=300) == 143
            finally:
                if train.poll() is None:
                    train.kill()
        _stop(prom)
    assert list((run / "checkpoints").glob("ckpt-*.index"))
