"""Exact resume: SIGKILL at any step, SIGTERM (preemption), checkpoints in object storage, keep-N.

`medsynth train` runs as a real subprocess that is really killed. With op determinism (the default)
a run interrupted and started again with the same arguments must end bitwise equal to one that ran
straight through: models, both optimizers, the step, the input iterator and the latents (stateless,
keyed by step) all come back from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medsynth.errors import StorageError

ROOT = Path(__file__).resolve().parent.parent
STEPS = 8
TIMEOUT = 900
# Tiny and quick to trace: 32 px, a frozen MobileNet (random weights, no download), width-2 generator.
FLAGS = [
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--seed",
    "3",
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
    "--sample-every",
    "4",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    from medsynth.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    return str(
        prepare(PrepareConfig(source="builtin://phantom", out=str(root), image_size=32, phantom_frames=40))
    )


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HOROVOD_RANK")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _argv(dataset: str, out: Path | str, steps: int = STEPS, every: int = 2, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "medsynth.cli",
        "train",
        "--data",
        dataset,
        "--out",
        str(out),
        "--steps",
        str(steps),
        "--checkpoint-every",
        str(every),
        *FLAGS,
        *extra,
    ]


def _start(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(argv, env=_env(**env), cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"training did not finish in {TIMEOUT} s: {log.read_text()[-3000:]}")


def _history_step(run: Path) -> int:
    path = run / "history.jsonl"
    if not path.exists():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[-1]["step"] if rows else 0


def _wait_for_step(proc: subprocess.Popen, run: Path, step: int, log: Path) -> int:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done = _history_step(run)
        if done >= step:
            return done
        if proc.poll() is not None:
            pytest.fail(
                f"training ended (rc {proc.returncode}) before step {step}: {log.read_text()[-3000:]}"
            )
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"step {step} not reached in {TIMEOUT} s")


def _state(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """Every model and optimizer tensor of the newest checkpoint (the iterator is checked by its effect)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(checkpoint_dir)))
    keys = [
        k
        for k in reader.get_variable_to_shape_map()
        if k.split("/")[0] in ("generator", "discriminator", "g_optimizer", "d_optimizer", "step")
    ]
    return {k: reader.get_tensor(k) for k in keys}


def _assert_bitwise(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and len(a) > 50
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def straight(dataset, tmp_path_factory) -> dict[str, np.ndarray]:
    tmp = tmp_path_factory.mktemp("straight")
    run = tmp / "runs/r/straight"
    proc = _start(_argv(dataset, run), tmp / "log")
    assert _wait(proc, tmp / "log") == 0, (tmp / "log").read_text()[-3000:]
    state = _state(run / "checkpoints")
    assert int(state["step/.ATTRIBUTES/VARIABLE_VALUE"]) == STEPS
    return state


@pytest.mark.slow
def test_sigkill_at_any_step_then_restart_ends_bitwise_equal(dataset, straight, tmp_path):
    run = tmp_path / "runs/r/killed"
    log = tmp_path / "log"
    proc = _start(_argv(dataset, run), log)
    reached = _wait_for_step(proc, run, 5, log)  # between the checkpoints of steps 4 and 6
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert reached < STEPS
    again = _start(_argv(dataset, run), log)
    assert _wait(again, log) == 0, log.read_text()[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["steps_this_run"] < STEPS  # it continued, it did not start over
    _assert_bitwise(_state(run / "checkpoints"), straight)
    rows = [json.loads(x)["step"] for x in (run / "history.jsonl").read_text().splitlines()]
    assert rows == list(range(1, STEPS + 1))  # rows after the checkpoint were logged once, not twice


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_within_the_grace_period_and_exits_143(dataset, straight, tmp_path):
    run = tmp_path / "runs/r/preempted"
    log = tmp_path / "log"
    proc = _start(_argv(dataset, run, STEPS, 1000), log)  # no checkpoint would be due before the end
    _wait_for_step(proc, run, 2, log)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=120)  # the manifests' terminationGracePeriodSeconds
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("no exit within the 120 s grace period after SIGTERM")
    assert rc == 143, log.read_text()[-3000:]
    saved = int(tf.train.latest_checkpoint(str(run / "checkpoints")).rsplit("-", 1)[1])
    assert 2 <= saved < STEPS and saved == _history_step(run)
    assert "SIGTERM: checkpoint written" in log.read_text()
    print(f"SIGTERM to exit: {time.monotonic() - sent:.1f} s")
    again = _start(_argv(dataset, run, STEPS, 1000), log)
    assert _wait(again, log) == 0, log.read_text()[-3000:]
    _assert_bitwise(_state(run / "checkpoints"), straight)


@pytest.mark.slow
def test_max_minutes_stops_at_a_step_with_a_checkpoint_and_the_run_continues_bitwise(
    dataset, straight, tmp_path
):
    run = tmp_path / "runs/r/limited"
    log = tmp_path / "log"
    # 6 ms: over after the first step (tracing alone takes longer), so the limit, not --steps, ends it
    proc = _start(_argv(dataset, run, STEPS, 1000, "--max-minutes", "0.0001"), log)
    assert _wait(proc, log) == 0, log.read_text()[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["steps_planned"] == STEPS, metrics
    assert metrics["stopped_by"] == "max_minutes"
    assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith("-1")
    assert "--max-minutes 0.0001 reached: stopped at step 1 of 8" in log.read_text()
    assert "training done" in log.read_text() and "(step 1)" in log.read_text()
    again = _start(_argv(dataset, run, STEPS, 1000), log)
    assert _wait(again, log) == 0, log.read_text()[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and "stopped_by" not in metrics
    _assert_bitwise(_state(run / "checkpoints"), straight)


# --- object storage --------------------------------------------------------------------------------


def _objects(bucket: str, prefix: str) -> list[str]:
    from medsynth import storage

    return [u[len(bucket) + 1 :] for u in storage.list_uris(f"{bucket}/{prefix}")]


@pytest.mark.slow
def test_checkpoints_go_to_the_bucket_and_a_new_pod_resumes_from_the_newest_complete_one(
    dataset, straight, gcs_bucket, tmp_path
):
    from medsynth import storage
    from medsynth.train.checkpoints import load_generator

    out = f"{gcs_bucket}/runs/r/x"
    first_node, second_node = tmp_path / "node1", tmp_path / "node2"
    log = tmp_path / "log"
    proc = _start(_argv(dataset, out, 5, 1, "--keep-checkpoints", "2"), log, MEDSYNTH_WORKDIR=str(first_node))
    assert _wait(proc, log) == 0, log.read_text()[-3000:]

    names = _objects(gcs_bucket, "runs/r/x/checkpoints")
    groups = {n.rsplit("/", 1)[1].split(".")[0] for n in names}
    assert {"ckpt-4", "ckpt-5"} <= groups and not groups & {"ckpt-1", "ckpt-2", "ckpt-3"}, names  # keep-N
    for g in ("ckpt-4", "ckpt-5"):
        assert storage.exists(f"{out}/checkpoints/{g}.{storage.MARKER}")  # marker: complete
    for rel in (
        "config.json",
        "metrics.json",
        "history.jsonl",
        "samples/latest.png",
        "checkpoints/model.json",
    ):
        assert storage.exists(f"{out}/{rel}"), rel
    local = next(first_node.rglob("checkpoints"))
    assert sorted(p.name for p in local.glob("ckpt-*.index")) == ["ckpt-4.index", "ckpt-5.index"]

    # A half-uploaded checkpoint (no marker) is never restored: the new pod takes ckpt-4.
    storage.delete_prefix(f"{out}/checkpoints/ckpt-5.{storage.MARKER}")
    proc = _start(
        _argv(dataset, out, STEPS, 1, "--keep-checkpoints", "2"), log, MEDSYNTH_WORKDIR=str(second_node)
    )
    assert _wait(proc, log) == 0, log.read_text()[-3000:]
    metrics = storage.read_json(f"{out}/metrics.json")
    assert metrics["steps_this_run"] == STEPS - 4
    local = next(second_node.rglob("checkpoints"))
    _assert_bitwise(_state(local), straight)

    # Evaluation and export read the run straight from the bucket.
    generator, info = load_generator(out)
    assert info["step"] == STEPS and generator.output_shape == (None, 32, 32, 1)
    shutil.rmtree(first_node, ignore_errors=True)


def test_an_unreachable_or_missing_bucket_is_a_clear_error(gcs_emulator, fast_retries, monkeypatch, tmp_path):
    from conftest import free_port

    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    def cfg(out: str) -> TrainConfig:
        return TrainConfig(
            data="builtin://phantom",
            out=out,
            image_size=32,
            steps=1,
            backbone="mobilenet",
            backbone_weights="none",
        )

    monkeypatch.setenv("MEDSYNTH_WORKDIR", str(tmp_path))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    with pytest.raises(StorageError, match="no-such-bucket-7f3a"):
        train(cfg("gs://no-such-bucket-7f3a/runs/r/x"))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    bucket = "medsynth-unreachable"
    with pytest.raises(StorageError, match=bucket):
        train(cfg(f"gs://{bucket}/runs/r/x"))
    assert not list(tmp_path.rglob("ckpt-*")), "nothing trained, nothing written"
