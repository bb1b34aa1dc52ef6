"""k8s/serving against TF Serving's behaviour, with the local TF-Serving-compatible server as stand-in.

What the manifests rely on, each checked on the rendered Deployment and the server:
- readiness: the probe's URL answers 2xx/3xx only while a version is AVAILABLE (TF Serving's
  `/v1/models/<name>/metadata` needs a loaded servable; `/v1/models/<name>` answers 200 for any
  version it knows, LOADING or failed).
- first rollout: TF Serving opens its ports only once its model has a version AVAILABLE (ServerCore
  waits for ServableRequest::Latest), so the deployment's Job publishes placeholder version 0 into
  an empty repository: the server starts, is Ready, refuses requests with one clear line, and the
  first push (version 1) replaces it.
- publishing: at no moment of a push to object storage does the newest version directory TF Serving
  lists hold saved_model.pb without every other file of the version (TF Serving lists `N/` as soon
  as one object lies below it; its loader starts from saved_model.pb).
"""

from __future__ import annotations

import re
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


def test_first_rollout_serves_the_placeholder_until_the_first_push(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from medsynth.serving import placeholder
    from medsynth.serving.export import list_versions

    objs = render(K8S / "serving")
    job = _one(objs, "Job", "tf-serving-placeholder")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", placeholder.__name__]
    model_name = c["args"][c["args"].index("--model-name") + 1]
    models_config = _one(objs, "ConfigMap")["data"]["models.config"]
    assert re.search(rf'name:\s*"{model_name}"', models_config)
    probe = _tf_serving_container()["readinessProbe"]

    repository = tmp_path / "models"
    assert placeholder.main(["--model-repository", str(repository), "--model-name", model_name]) == 0
    repo = repository / model_name
    assert [p.name for p in repo.iterdir()] == ["0"]
    with serve(_config(repo)) as handle:
        rest = Rest(handle.rest_port)
        assert _ready(rest, probe)  # the rollout completes before any model exists
        for signature, inputs in (("png_from_seed", [7]), ("serving_default", [[0.0, 1.0]])):
            status, doc = rest("POST", f"/v1/models/{model_name}:predict",
                               {"signature_name": signature, "instances": inputs})
            assert status == 400 and placeholder.MESSAGE in doc["error"], (signature, doc)
        # a second run (every apply) leaves a repository with a version alone
        assert placeholder.main(["--model-repository", str(repository), "--model-name", model_name]) == 0
        assert [p.name for p in repo.iterdir()] == ["0"]
        # the first push writes version 1 (the placeholder counts for nobody's numbering) and is served
        assert list_versions(repo) == []
        install(tiny_model(tmp_path_factory, 1), repo, 1)
        wait_for(lambda: rest("POST", f"/v1/models/{model_name}:predict",
                              {"signature_name": "png_from_seed", "instances": [7]})[0] == 200)
        assert _ready(rest, probe) and list_versions(repo) == [1]
        assert placeholder.main(["--model-repository", str(repository), "--model-name", model_name]) == 0
        assert sorted(p.name for p in repo.iterdir()) == ["0", "1"]
        rest.conn.close()


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


def _tf_serving_view(uris: list[str], base: str) -> dict[int, set[str]]:
    """What TF Serving's FileSystemStoragePathSource makes of a GCS listing: every object's first path
    component below the base path that parses as an integer (safe_strto64) is a version directory."""
    versions: dict[int, set[str]] = {}
    for uri in uris:
        head, _, rel = uri[len(base) + 1 :].partition("/")
        if re.fullmatch(r"\s*[+-]?\d+\s*", head):
            versions.setdefault(int(head), set()).add(rel)
    return versions


def _watch_every_object_write(monkeypatch: pytest.MonkeyPatch, base: str) -> list[dict[int, set[str]]]:
    """One object per write, and TF Serving's view of `base` after each (what a poll could see)."""
    from medsynth import storage
    from medsynth.storage import transfer

    seen: list[dict[int, set[str]]] = []
    for name in ("upload_files", "rewrite_blobs"):
        original = getattr(transfer, name)

        def one_by_one(pairs, dst, original=original):  # noqa: ANN001, ANN202
            for pair in pairs:
                original([pair], dst)
                seen.append(_tf_serving_view(storage.list_uris(base), base))

        monkeypatch.setattr(transfer, name, one_by_one)
    return seen


def _half_written(seen: list[dict[int, set[str]]], version: int, files: set[str]) -> list[set[str]]:
    """Every moment the newest listed version held saved_model.pb but not all of `files`."""
    return [view[version] for view in seen if view and max(view) == version
            and "saved_model.pb" in view[version] and not files <= view[version]]


def test_tf_serving_never_finds_a_half_written_version_in_the_bucket(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from medsynth import storage
    from medsynth.serving.export import list_versions
    from medsynth.serving.push import publish_version
    from medsynth.serving.repository import ModelRepository

    model = tiny_model(tmp_path_factory, 1)
    # What TF Serving loads: the SavedModel's files (medsynth's own _COMPLETE marker means nothing to it)
    files = {str(p.relative_to(model)) for p in model.rglob("*") if p.is_file() and p.name != storage.MARKER}
    assert {"saved_model.pb", "variables/variables.index"} <= files
    base = f"{gcs_bucket}/models/generator"
    seen = _watch_every_object_write(monkeypatch, base)

    # The check catches a plain upload: files in name order put saved_model.pb before variables/.
    storage.publish_dir(model, f"{base}/1")
    assert _half_written(seen, 1, files)

    seen.clear()
    publish_version(model, base, 2)
    assert seen and not _half_written(seen, 2, files)
    assert _tf_serving_view(storage.list_uris(base), base)[2] >= files
    assert list_versions(base) == [1, 2]  # the staging copy is gone and never counted as a version

    # The local server's poll serves it, loaded from the bucket.
    repo = ModelRepository(base, "generator", poll_wait_seconds=0)
    repo.poll()
    assert repo.served_version() == 2
    repo.stop()
