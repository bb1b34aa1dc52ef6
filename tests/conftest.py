"""Shared fixtures: a real GCS emulator process, fresh buckets, fast retries, a fault-injecting proxy."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).parent))  # tests/faultproxy.py importable from any test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GcsEmulator:
    """A running `gcp-storage-emulator`; `endpoint` is the value for STORAGE_EMULATOR_HOST."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._client = None

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket; returns its gs:// URI."""
        from google.cloud import storage as gcs

        name = name or f"test-{uuid.uuid4().hex[:12]}"
        if self._client is None:
            self._client = gcs.Client(project="medsynth-test",
                                      client_options={"api_endpoint": self.endpoint})
        self._client.create_bucket(name)
        return f"gs://{name}"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """Start the emulator once per session and point STORAGE_EMULATOR_HOST at it for the session."""
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    log = tmp_path_factory.mktemp("gcs-emulator") / "emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
                                stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(endpoint + "/", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gcp-storage-emulator did not start on {endpoint}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    try:
        yield GcsEmulator(endpoint)
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gcs_bucket(gcs_emulator: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty bucket on the emulator (gs://...), with STORAGE_EMULATOR_HOST pointing at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    return gcs_emulator.create_bucket()


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Millisecond backoff and a short deadline, so fault and outage tests finish in seconds."""
    from medsynth.storage import client

    monkeypatch.setattr(client, "RETRY_SETTINGS",
                        client.RetrySettings(initial_s=0.01, maximum_s=0.2, multiplier=2.0, deadline_s=20.0))


@pytest.fixture
def fault_proxy(gcs_emulator: GcsEmulator,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., object]]:
    """Factory: `fault_proxy(rate=..., seed=..., ...)` starts a FaultProxy in front of the emulator and
    points STORAGE_EMULATOR_HOST at it; every proxy is stopped after the test."""
    from faultproxy import FaultProxy

    started: list[FaultProxy] = []

    def make(**kwargs: object) -> FaultProxy:
        proxy = FaultProxy(gcs_emulator.endpoint, **kwargs).start()  # type: ignore[arg-type]
        started.append(proxy)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.endpoint)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def keras_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """An empty keras cache and a network that refuses every URL; returns the URLs keras asked for.
    Not known to be offline (MEDSYNTH_OFFLINE unset): what keras tries is what the code would try."""
    import urllib.error

    import keras.src.utils.data_utils as data_utils

    asked: list[str] = []

    def refuse(url: str, *args: object, **kwargs: object) -> None:
        asked.append(url)
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MEDSYNTH_OFFLINE", raising=False)
    monkeypatch.setattr(data_utils, "urlretrieve", refuse)
    return asked
