"""An MPIJob worker pod, simulated here: its PID 1 gets SIGTERM and the ranks still write a checkpoint.

A container is a PID namespace: the kubelet signals its PID 1 only, and when PID 1 exits the kernel
SIGKILLs every other process in it. `unshare --pid --fork --mount-proc` gives the test the same (it
needs root, as the development machines and CI have). The worker's entrypoint is the one the
MPIJob names (`cluster.job_manifest`); the SSH server is a stand-in that starts a real
`medsynth train` rank the way sshd's session does: a descendant in a session of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume import _argv, _env, _history_step, dataset  # noqa: F401 - dataset is a fixture

from medsynth.cluster import worker

# Like `sshd -D`: stays up, and exits on SIGTERM through a handler of its own (a namespace's PID 1
# ignores signals it has no handler for; sshd has one).
STANDIN_SSHD = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
log = open(sys.argv[1], "w")
subprocess.Popen(sys.argv[2:], start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
while True:
    time.sleep(1)
"""


def _inner_pid1(outer: subprocess.Popen, timeout: float = 30) -> int:
    """The PID, seen from here, of the namespace's PID 1 (the only child of `unshare`)."""
    children = Path(f"/proc/{outer.pid}/task/{outer.pid}/children")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    pytest.fail("unshare started no child")


def _pod(entrypoint: list[str], rank: list[str], tmp: Path) -> tuple[subprocess.Popen, Path]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this simulation needs `unshare` (util-linux) and root, as CI has")
    standin = tmp / "sshd.py"
    standin.write_text(STANDIN_SSHD)
    log = tmp / "rank.log"
    argv = ["unshare", "--pid", "--fork", "--mount-proc", *entrypoint, sys.executable, str(standin), str(log)]
    out = (tmp / "pod.log").open("w")
    return subprocess.Popen([*argv, *rank], env=_env(), stdout=out, stderr=subprocess.STDOUT), log


def _term_pid1_once_training(pod: subprocess.Popen, run: Path, log: Path) -> int:
    deadline = time.monotonic() + 600
    while _history_step(run) < 2:
        if pod.poll() is not None or time.monotonic() > deadline:
            pod.kill()
            pytest.fail(f"the rank did not reach step 2: {log.read_text()[-2000:] if log.exists() else ''}")
        time.sleep(0.1)
    os.kill(_inner_pid1(pod), signal.SIGTERM)
    try:
        return pod.wait(timeout=120)  # the worker pods' terminationGracePeriodSeconds
    except subprocess.TimeoutExpired:
        pod.kill()
        pytest.fail("the pod did not stop within its 120 s grace period")


def _checkpoints(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("ckpt-*.index"))


@pytest.mark.slow
def test_sigterm_to_the_worker_pid1_reaches_the_ranks_and_leaves_a_checkpoint(dataset, tmp_path):  # noqa: F811
    from components.images import TRAINER_IMAGE
    from medsynth import cluster
    from medsynth.train.config import TrainConfig

    cfg = TrainConfig(data="builtin://phantom", out="gs://b/runs/x", batch_size=8)
    job = cluster.job_manifest("mpijob", cfg, workers=2, gpus_per_worker=4, image=TRAINER_IMAGE)
    (container,) = job["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
    entrypoint = [sys.executable if a == "python" else a for a in container["command"]]
    assert container["args"][0] == "/usr/sbin/sshd", "the entrypoint wraps sshd; the stand-in replaces it"

    # Today's manifests before this fix: sshd itself as PID 1. Its exit takes the rank down unsaved.
    bare = tmp_path / "bare"
    bare.mkdir()
    run = bare / "run"
    pod, log = _pod([], _argv(dataset, run, 10_000, 100_000), bare)
    _term_pid1_once_training(pod, run, log)
    assert _checkpoints(run) == [], "without the entrypoint the rank should have been SIGKILLed"

    # The worker entrypoint as PID 1: the rank gets SIGTERM, checkpoints at the end of its step, exits.
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    run = wrapped / "run"
    pod, log = _pod(entrypoint, _argv(dataset, run, 10_000, 100_000), wrapped)
    sent = time.monotonic()
    rc = _term_pid1_once_training(pod, run, log)
    text = log.read_text()
    assert rc == worker.TERMINATED_EXIT, (tmp_path / "wrapped" / "pod.log").read_text()[-2000:]
    assert "SIGTERM: checkpoint written" in text, text[-2000:]
    (saved,) = _checkpoints(run)[-1:]
    assert int(saved.split("-")[1].split(".")[0]) == _history_step(run) >= 2
    print(f"SIGTERM to the pod's PID 1 -> pod gone: {time.monotonic() - sent:.1f} s")


def test_rank_detection_takes_training_processes_only():
    assert worker.is_rank(["/opt/venv/bin/python", "/opt/venv/bin/medsynth", "train", "--data", "x"])
    assert worker.is_rank(["python", "-m", "medsynth.cli", "train"])
    assert not worker.is_rank(["bash", "-c", "cd /home && medsynth train --data x"])  # its shell
    assert not worker.is_rank(["sshd: medsynth@notty"])
    assert not worker.is_rank(["/opt/venv/bin/medsynth", "evaluate", "--run", "train"])


def test_the_entrypoint_returns_the_servers_own_exit_code_and_rejects_no_command(tmp_path, capsys):
    assert worker.main([sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert worker.main([]) == 2
    assert worker.main([str(tmp_path / "no-such-sshd")]) == 2
    assert "cannot start" in capsys.readouterr().err
