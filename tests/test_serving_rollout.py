"""k8s/serving against TF Serving's behaviour, with the local TF-Serving-compatible server as stand-in.

What the manifests rely on, each checked on the rendered Deployment and the server:
- readiness: the probe's URL answers 2xx/3xx only while a version is AVAILABLE (TF Serving's
  `/v1/models/<name>/metadata` needs a loaded servable; `/v1/models/<name>` answers 200 for any
  version it knows, LOADING or failed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_manifests import K8S, _one, render
from test_serving import Rest, broken_version, install, tiny_model, wait_for

from medsynth.serving.app import ServeConfig
from medsynth.serving.server import serve


def _tf_serving_container() -> dict:
    deploy = _one(render(K8S / "serving"), "Deployment", "tf-serving")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return container


def _config(repo: Path) -> ServeConfig:
    return ServeConfig(str(repo), rest_port=0, grpc_port=None, host="127.0.0.1",
                       file_system_poll_wait_seconds=0.2)


def _ready(rest: Rest, probe: dict) -> bool:
    """What the kubelet concludes from an httpGet probe: success is a status from 200 to 399."""
    status, _ = rest("GET", probe["httpGet"]["path"])
    return 200 <= status < 400


def test_readiness_fails_while_no_version_is_available_and_passes_once_one_is(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    probe = _tf_serving_container()["readinessProbe"]
    repo = tmp_path / "generator"
    repo.mkdir()
    broken_version(repo, 1)  # the only version fails to load: state END with its error
    with serve(_config(repo)) as handle:
        rest = Rest(handle.rest_port)
        status, doc = rest("GET", "/v1/models/generator")
        assert status == 200 and doc["model_version_status"][0]["state"] == "END"  # known, not servable
        assert not _ready(rest, probe)
        install(tiny_model(tmp_path_factory, 1), repo, 2)
        wait_for(lambda: _ready(rest, probe))
        rest.conn.close()
