"""The demo's console: a real kfp.local run of two small tasks, filed by task, told in a line each.

kfp.local prints its own lines and every line a task prints; the console must recognise kfp.local's
(they are kfp's formats, not ours), so the tasks here run under kfp.local itself. Also: whether the
network is there, decided once per run and obeyed by the downloads.

No `from __future__ import annotations`: kfp reads the components' type hints as real types.
"""

import contextlib
import io
import os
from pathlib import Path

import pytest
from kfp import dsl, local

from medsynth import network
from medsynth.demo_console import Console
from medsynth.errors import ConfigError, StorageError

ROOT = Path(__file__).resolve().parent.parent


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def talk(n: int) -> str:
    import sys

    from medsynth.progress import report_result

    print("2026-12-07 12:20:47.217332: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] "
          "Unable to register cuDNN factory", file=sys.stderr)
    for i in range(n):
        print(f"work: {100 * (i + 1) // n:3d}%|####| {i + 1}/{n} [00:01<00:00, 2.00it/s]", file=sys.stderr)
    report_result(f"did {n} things")
    return "made"


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail(made: str):
    print(f"got {made}")
    raise ValueError("the disk is full")


@dsl.pipeline(name="console-test")
def two_tasks(n: int = 3):
    made = talk(n=n).set_display_name("talk")
    fail(made=made.output).set_display_name("fail-here")


def _titles() -> dict[str, str]:
    return {name: t.task_info.name for name, t in two_tasks.pipeline_spec.root.dag.tasks.items()}


def test_each_task_is_a_line_its_log_a_file_and_a_failure_shows_its_last_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the tasks import medsynth, as the demo's do
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    terminal = io.StringIO()
    console = Console(terminal, tmp_path / "logs", _titles(), tty=False)
    routed = contextlib.ExitStack()
    routed.enter_context(contextlib.redirect_stdout(console))
    routed.enter_context(contextlib.redirect_stderr(console))
    with routed, pytest.raises(RuntimeError):
        two_tasks(n=3)
    console.close()
    shown = terminal.getvalue().splitlines()
    assert shown[0].startswith("[ 1/2] talk") and shown[0].endswith("…")
    assert shown[1].startswith("[ 1/2] talk") and " ok " in shown[1] and shown[1].endswith("did 3 things")
    assert shown[2] == "[ 2/2] fail-here …"
    assert shown[3].startswith("[ 2/2] fail-here FAILED after ") and shown[3].endswith("its last lines:")
    assert any("ValueError: the disk is full" in line for line in shown)  # the task's last lines
    assert shown[-1].strip() == f"whole log: {tmp_path / 'logs' / '02-fail-here.log'}"
    assert console.failed.title == "fail-here"
    text = terminal.getvalue()
    assert "cuDNN" not in text and "executor_input" not in text and "work:" not in text
    talk_log = (tmp_path / "logs" / "01-talk.log").read_text()
    assert "Unable to register cuDNN factory" in talk_log and "3/3" in talk_log  # all kept, in its file
    assert "the disk is full" in (tmp_path / "logs" / "02-fail-here.log").read_text()
    assert "the disk is full" in (tmp_path / "logs" / "pipeline.log").read_text()


def test_on_a_terminal_the_task_line_is_redrawn_with_its_progress_bar(tmp_path):
    terminal = io.StringIO()
    clock = iter([0.0, 75.0]).__next__
    console = Console(terminal, tmp_path, {"train": "train-final"}, tty=True, clock=clock)
    console.write("12:20:54.131 - INFO - Executing task \x1b[96m'train'\x1b[0m\n")
    console.write("    train final:  50%|█████     | 10/20 [00:05<00:05, 2.00step/s]\n")
    console.write("    [KFP Executor 2026-12-07 12:21:00,000 INFO]: result: step 20, 3.1 img/s\n")
    console.write("12:21:20.088 - INFO - Task \x1b[96m'train'\x1b[0m finished with status "
                  "\x1b[92mSUCCESS\x1b[0m\n")
    console.close()
    draws = terminal.getvalue().split("\r\x1b[K")[1:]
    assert draws[0].startswith("[ 1/1] train-final")
    assert "10/20" in draws[1] and not draws[1].endswith("\n")  # redrawn in place
    assert draws[2] == "[ 1/1] train-final ok   1m15s  step 20, 3.1 img/s\n"
    interrupted = io.StringIO()
    console = Console(interrupted, tmp_path / "again", {"train": "train-final"}, tty=True)
    console.write("12:20:54.131 - INFO - Executing task 'train'\n")
    console.close()  # Ctrl-C while the task ran: the redrawn line is ended, the next message starts clean
    assert interrupted.getvalue().endswith("…\n")


def test_the_network_is_decided_once_and_the_subprocesses_inherit_it(monkeypatch):
    monkeypatch.delenv(network.OFFLINE_ENV, raising=False)
    asked = []
    monkeypatch.setattr(network, "probe", lambda: asked.append(1) or network.Network(False, "no route"))
    found = network.decide()
    assert not found.online and asked == [1] and os.environ[network.OFFLINE_ENV] == "1"
    assert network.known_offline()
    assert "offline (no route)" in network.describe(found)
    found = network.decide()  # decided: the environment answers, nothing is asked again
    assert asked == [1] and found.why == f"{network.OFFLINE_ENV}=1"
    monkeypatch.setenv(network.OFFLINE_ENV, "0")
    assert network.decide().online and not network.known_offline()
    monkeypatch.setenv(network.OFFLINE_ENV, "maybe")
    with pytest.raises(ConfigError, match="MEDSYNTH_OFFLINE='maybe'"):
        network.known_offline()


def test_the_probe_reads_any_answer_as_online_and_no_answer_as_offline():
    import http.server
    import socket
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to all
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert network.probe(f"http://127.0.0.1:{server.server_port}/", timeout=5).online
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/"
        found = network.probe(closed, timeout=5)
    assert not found.online and closed in found.why


def test_known_offline_means_no_download_is_tried(keras_downloads, monkeypatch):
    from medsynth.evaluate import fid
    from medsynth.models.backbones import build_backbone

    asked = keras_downloads
    monkeypatch.setattr(fid, "_IMAGENET_FAILURE", [])
    monkeypatch.setenv(network.OFFLINE_ENV, "1")
    with pytest.raises(ConfigError, match=r"ImageNet weights of mobilenet could not be fetched \(no network"):
        build_backbone("mobilenet", 32, "imagenet")
    with pytest.raises(StorageError, match="no network"):
        fid.resolve_inception_weights("imagenet")
    assert asked == []  # and `auto` falls back on that error (tests/test_metrics.py)
