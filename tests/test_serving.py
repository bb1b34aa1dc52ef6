"""`medsynth serve` over real sockets: TF Serving's REST and gRPC APIs, limits, hot loading, metrics."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from medsynth.serving.app import METRICS_PATH, ServeConfig
from medsynth.serving.export import export_random_generator
from medsynth.serving.server import serve

SIZE, LATENT, MAX_IMAGES, MAX_BYTES = 16, 8, 8, 64 * 1024


def tiny_model(tmp_path_factory: pytest.TempPathFactory, seed: int) -> Path:
    """A 16 px generator with random weights, exported once per session and seed."""
    path = tmp_path_factory.getbasetemp() / "serving-models" / f"seed{seed}"
    if not (path / "saved_model.pb").exists():
        export_random_generator(path, image_size=SIZE, latent_dim=LATENT, width=2, seed=seed)
    return path


def install(model: Path, repo: Path, version: int) -> Path:
    """Copy a model into a repository the way a pusher must: complete before its version name appears."""
    tmp = repo / f".incoming-{version}"
    shutil.copytree(model, tmp)
    return tmp.rename(repo / str(version))


class Rest:
    """A keep-alive REST client that returns (status, parsed JSON) and never raises on 4xx."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def __call__(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        try:
            self.conn.request(method, path, body=data)
            resp = self.conn.getresponse()
            payload = resp.read()
        except (ConnectionError, http.client.HTTPException):
            self.conn.close()
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
        ctype = resp.getheader("Content-Type", "")
        return resp.status, (json.loads(payload) if "json" in ctype else payload.decode())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served") / "generator"
    root.mkdir()
    install(tiny_model(tmp_path_factory, 1), root, 1)
    return root


@pytest.fixture(scope="module")
def server(repo: Path):
    cfg = ServeConfig(str(repo), rest_port=0, grpc_port=0, host="127.0.0.1",
                      file_system_poll_wait_seconds=0.2, max_images_per_request=MAX_IMAGES,
                      max_request_bytes=MAX_BYTES)
    handle = serve(cfg)
    yield handle
    handle.stop()


@pytest.fixture()
def rest(server) -> Rest:
    client = Rest(server.rest_port)
    yield client
    client.conn.close()


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


@pytest.fixture(scope="module")
def in_process(repo: Path):
    return tf.saved_model.load(str(repo / "1"))


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- REST: status and metadata ---------------------------------------------------------------------
def test_model_status(rest: Rest) -> None:
    expected = {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert rest("GET", "/v1/models/generator") == (200, expected)
    assert rest("GET", "/v1/models/generator/versions/1") == (200, expected)
    status, body = rest("GET", "/v1/models/generator/versions/9")
    assert status == 404 and "version 9" in body["error"]
    status, body = rest("GET", "/v1/models/other")
    assert status == 404 and body == {"error": "Could not find any versions of model other"}
    assert rest("GET", "/v1/models")[0] == 400


def test_model_metadata(rest: Rest) -> None:
    for path in ("/v1/models/generator/metadata", "/v1/models/generator/versions/1/metadata"):
        status, body = rest("GET", path)
        assert status == 200
        assert body["model_spec"] == {"name": "generator", "version": "1", "signature_name": ""}
        sigs = body["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "generate_from_seed", "png_from_seed"} <= set(sigs)
        z = sigs["serving_default"]["inputs"]["z"]
        assert z["dtype"] == "DT_FLOAT"
        assert [d["size"] for d in z["tensor_shape"]["dim"]] == ["-1", str(LATENT)]
        outs = sigs["serving_default"]["outputs"]
        assert outs["images"]["dtype"] == "DT_UINT8" and outs["png_bytes"]["dtype"] == "DT_STRING"
        assert sigs["generate_from_seed"]["inputs"]["seed"]["dtype"] == "DT_INT64"
        assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert rest("GET", "/v1/models/generator/versions/2/metadata")[0] == 404


# --- REST: predict in both formats ----------------------------------------------------------------
def test_predict_row_and_columnar_formats(rest: Rest, in_process) -> None:
    z = np.random.default_rng(0).normal(size=(3, LATENT)).round(4)
    bodies = {
        "row plain": {"instances": z.tolist()},
        "row named": {"signature_name": "serving_default", "instances": [{"z": r} for r in z.tolist()]},
        "columnar plain": {"inputs": z.tolist()},
        "columnar named": {"inputs": {"z": z.tolist()}},
    }
    expected = in_process.signatures["serving_default"](z=tf.constant(z, tf.float32))
    exp_images, exp_pngs = expected["images"].numpy(), list(expected["png_bytes"].numpy())
    for what, body in bodies.items():
        status, doc = rest("POST", "/v1/models/generator:predict", body)
        assert status == 200, (what, doc)
        if what.startswith("row"):
            preds = doc["predictions"]
            assert len(preds) == 3 and set(preds[0]) == {"images", "png_bytes"}
            images = np.array([p["images"] for p in preds], np.uint8)
            pngs = [base64.b64decode(p["png_bytes"]["b64"]) for p in preds]
        else:
            outputs = doc["outputs"]
            images = np.array(outputs["images"], np.uint8)
            pngs = [base64.b64decode(v["b64"]) for v in outputs["png_bytes"]]
        assert images.shape == (3, SIZE, SIZE, 1)
        np.testing.assert_array_equal(images, exp_images)
        assert pngs == exp_pngs
        for img, png in zip(images, pngs, strict=True):
            np.testing.assert_array_equal(png_pixels(png), img[..., 0])
    # a single output comes back as a plain list (row) or a plain value (columnar), as TF Serving does
    status, doc = rest("POST", "/v1/models/generator/versions/1:predict",
                       {"signature_name": "png_from_seed", "instances": [4, 5]})
    assert status == 200 and [set(p) for p in doc["predictions"]] == [{"b64"}, {"b64"}]
    status, doc = rest("POST", PREDICT, {"signature_name": "png_from_seed", "inputs": [4]})
    assert status == 200 and isinstance(doc["outputs"], list) and set(doc["outputs"][0]) == {"b64"}


def test_same_seed_same_bytes_over_rest_grpc_and_in_process(rest: Rest, stubs, in_process) -> None:
    seeds = [2**32 * 9 + k for k in range(4)]
    local = in_process.signatures["generate_from_seed"](seed=tf.constant(seeds, tf.int64))
    local_pngs = list(local["png_bytes"].numpy())

    status, doc = rest("POST", PREDICT, {"signature_name": "png_from_seed", "instances": seeds})
    assert status == 200
    rest_png = [base64.b64decode(p["b64"]) for p in doc["predictions"]]
    # split differently: one request per image, through the other seeded signature
    rest_single = []
    for s in seeds:
        _, d = rest("POST", "/v1/models/generator:predict",
                    {"signature_name": "generate_from_seed", "inputs": {"seed": [s]}})
        rest_single.append(base64.b64decode(d["outputs"]["png_bytes"][0]["b64"]))
        np.testing.assert_array_equal(np.array(d["outputs"]["images"][0], np.uint8),
                                      local["images"].numpy()[seeds.index(s)])

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "generator"
    request.model_spec.signature_name = "generate_from_seed"
    request.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.array(seeds[::-1], np.int64)))
    response = stubs[0].Predict(request, timeout=60)
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "generate_from_seed"
    grpc_png = list(tf.make_ndarray(response.outputs["png_bytes"]))[::-1]
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["images"])[::-1], local["images"].numpy())
    request.output_filter.append("png_bytes")
    assert set(stubs[0].Predict(request, timeout=60).outputs) == {"png_bytes"}

    assert rest_png == rest_single == grpc_png == local_pngs
    assert len(set(local_pngs)) == 4


# --- gRPC ------------------------------------------------------------------------------------------
def test_grpc_metadata_status_and_errors(stubs) -> None:
    predict, models = stubs
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "generator"
    req.metadata_field.append("signature_def")
    resp = predict.GetModelMetadata(req, timeout=30)
    assert resp.model_spec.version.value == 1
    sigmap = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sigmap)
    assert sigmap.signature_def["png_from_seed"].inputs["seed"].dtype == tf.int64.as_datatype_enum

    status_req = get_model_status_pb2.GetModelStatusRequest()
    status_req.model_spec.name = "generator"
    status = models.GetModelStatus(status_req, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]

    def code_of(call, request) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        return info.value.code()

    bad = predict_pb2.PredictRequest()
    bad.model_spec.name = "nope"
    bad.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int64)))
    assert code_of(predict.Predict, bad) == grpc.StatusCode.NOT_FOUND
    bad.model_spec.name = "generator"
    bad.model_spec.signature_name = "png_from_seed"
    bad.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.array([1.5], np.float32)))
    assert code_of(predict.Predict, bad) == grpc.StatusCode.INVALID_ARGUMENT
    bad.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.arange(MAX_IMAGES + 1, dtype=np.int64)))
    assert code_of(predict.Predict, bad) == grpc.StatusCode.INVALID_ARGUMENT
    bad.inputs["seed"].CopyFrom(tf.make_tensor_proto(np.array([1], np.int64)))
    bad.model_spec.version.value = 5
    assert code_of(predict.Predict, bad) == grpc.StatusCode.NOT_FOUND
    bad.model_spec.ClearField("version")
    bad.model_spec.version_label = "stable"
    assert code_of(predict.Predict, bad) == grpc.StatusCode.INVALID_ARGUMENT
    no_fields = get_model_metadata_pb2.GetModelMetadataRequest()
    no_fields.model_spec.name = "generator"
    assert code_of(predict.GetModelMetadata, no_fields) == grpc.StatusCode.INVALID_ARGUMENT
    big = predict_pb2.PredictRequest()
    big.model_spec.name = "generator"
    big.inputs["z"].CopyFrom(tf.make_tensor_proto(np.zeros((MAX_BYTES // 4 + 10,), np.float32)))
    assert code_of(predict.Predict, big) == grpc.StatusCode.RESOURCE_EXHAUSTED  # over --max-request-bytes


# --- bad requests ------------------------------------------------------------------------------------
PREDICT = "/v1/models/generator:predict"
NAN_Z = ("[" + ",".join(["NaN"] + ["0.5"] * (LATENT - 1)) + "]").encode()
BAD = [
    ("malformed JSON", PREDICT, b'{"instances": [[0.1, ', 400, "JSON Parse error"),
    ("empty body", PREDICT, b"", 400, "empty"),
    ("not an object", PREDICT, b"[1, 2]", 400, "not a JSON object"),
    ("no inputs", PREDICT, b'{"signature_name": "serving_default"}', 400, "Missing 'inputs' or 'instances'"),
    ("both keys", PREDICT, b'{"instances": [1], "inputs": [1]}', 400, "only one of"),
    ("empty instances", PREDICT, b'{"instances": []}', 400, "No values"),
    ("wrong width", PREDICT, json.dumps({"instances": [[0.1] * (LATENT + 1)]}).encode(), 400,
     "signature takes"),
    ("wrong rank", PREDICT, json.dumps({"inputs": [0.1] * LATENT}).encode(), 400, "signature takes"),
    ("ragged", PREDICT, json.dumps({"inputs": [[0.1] * LATENT, [0.1]]}).encode(), 400, "ragged"),
    ("NaN", PREDICT, b'{"instances": [' + NAN_Z + b"]}", 400, "NaN"),
    ("Infinity", PREDICT, b'{"instances": [' + NAN_Z.replace(b"NaN", b"Infinity") + b"]}", 400, "infinity"),
    ("strings", PREDICT, json.dumps({"instances": [["a"] * LATENT]}).encode(), 400, "numbers"),
    ("decimal seed", PREDICT, b'{"signature_name": "png_from_seed", "instances": [1.5]}', 400, "integers"),
    ("bool seed", PREDICT, b'{"signature_name": "png_from_seed", "instances": [true]}', 400, "true/false"),
    ("seed overflow", PREDICT, b'{"signature_name": "png_from_seed", "instances": [1e400]}', 400, ""),
    ("int overflow", PREDICT, json.dumps({"signature_name": "png_from_seed", "instances": [2**70]}).encode(),
     400, ""),
    ("unknown signature", PREDICT, b'{"signature_name": "nope", "instances": [1]}', 400,
     "not found in signature"),
    ("unknown input", PREDICT, b'{"inputs": {"z": [[0]], "w": 1}}', 400, ""),
    ("too many images", PREDICT, json.dumps({"signature_name": "png_from_seed",
                                             "instances": list(range(MAX_IMAGES + 1))}).encode(),
     400, "--max-images-per-request"),
    ("huge n", PREDICT, json.dumps({"signature_name": "png_from_seed", "inputs": list(range(5000))}).encode(),
     400, "at most 8 per request"),
    ("unknown model", "/v1/models/other:predict", b'{"instances": [1]}', 404, "Latest(other)"),
    ("unknown version", "/v1/models/generator/versions/3:predict", b'{"instances": [1]}', 404,
     "Specific(generator, 3)"),
    ("label", "/v1/models/generator/labels/stable:predict", b'{"instances": [1]}', 400, "label"),
    ("classify", "/v1/models/generator:classify", b'{"examples": []}', 400, ":predict"),
    ("malformed path", "/v1/models/generator:explode", b"{}", 400, "Malformed request"),
]


@pytest.mark.parametrize("what,path,body,status,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_a_clear_4xx(rest: Rest, what: str, path: str, body: bytes, status: int,
                                      fragment: str) -> None:
    got, doc = rest("POST", path, raw=body)
    assert got == status, doc
    assert isinstance(doc, dict) and list(doc) == ["error"] and doc["error"]
    assert fragment in doc["error"]
    # the server keeps serving
    assert rest("POST", PREDICT, {"signature_name": "png_from_seed", "instances": [1]})[0] == 200


def test_oversized_body_is_refused_and_the_server_keeps_serving(rest: Rest, server) -> None:
    body = json.dumps({"instances": [[0.123456789] * LATENT] * 2000}).encode()
    assert len(body) > MAX_BYTES
    status, doc = rest("POST", PREDICT, raw=body)
    assert status == 400 and "--max-request-bytes" in doc["error"]
    fresh = Rest(server.rest_port)  # the connection was closed after the refusal; a new one works
    assert fresh("POST", PREDICT, {"signature_name": "png_from_seed", "instances": [1]})[0] == 200
    assert fresh("GET", "/v1/foo")[0] == 400
    assert fresh("GET", "/elsewhere")[0] == 404
    fresh.conn.close()


# --- metrics and load --------------------------------------------------------------------------------
def metric_values(rest: Rest) -> dict[tuple[str, tuple], float]:
    status, text = rest("GET", METRICS_PATH)
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def count(values: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in values.items() if n == name and labels.items() <= dict(ls).items())


def test_load_8_clients_x_50_requests_loses_nothing(server, rest: Rest, in_process) -> None:
    before = metric_values(rest)
    clients, per_client = 8, 50
    seeds = [[1000 * c + i for i in range(per_client)] for c in range(clients)]
    results: dict[int, bytes] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def worker(my_seeds: list[int]) -> None:
        client = Rest(server.rest_port)
        try:
            for i, s in enumerate(my_seeds):
                batch = [s] if i % 2 else [s, -s - 1]  # mix batch sizes 1 and 2
                status, doc = client("POST", PREDICT, {"signature_name": "png_from_seed", "instances": batch})
                if status != 200:
                    errors.append(f"{s}: {status} {doc}")
                    continue
                with lock:
                    for seed, p in zip(batch, doc["predictions"], strict=True):
                        results[seed] = base64.b64decode(p["b64"])
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(e))
        finally:
            client.conn.close()

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    asked = sorted(results)
    expected = in_process.signatures["png_from_seed"](seed=tf.constant(asked, tf.int64))["png_bytes"]
    expected = list(expected.numpy())
    assert [results[s] for s in asked] == expected
    after = metric_values(rest)
    ok = {"method": "rest_predict", "code": "OK"}
    answered = count(after, "medsynth_serve_requests_total", **ok) - count(
        before, "medsynth_serve_requests_total", **ok)
    assert answered == clients * per_client
    images = count(after, "medsynth_serve_images_total") - count(before, "medsynth_serve_images_total")
    assert images == len(results) == clients * per_client * 3 // 2
    assert count(after, "medsynth_serve_request_seconds_count", method="rest_predict") >= clients * per_client
    assert count(after, "medsynth_serve_model_version", model="generator") == 1


def test_metrics_count_errors_by_code(rest: Rest) -> None:
    rest("POST", PREDICT, raw=b"{")
    rest("GET", "/v1/models/generator/versions/5")
    values = metric_values(rest)
    assert count(values, "medsynth_serve_requests_total", method="rest_predict", code="INVALID_ARGUMENT") >= 1
    assert count(values, "medsynth_serve_requests_total", method="rest_status", code="NOT_FOUND") >= 1
    assert any(n == "medsynth_serve_request_seconds_bucket" for n, _ in values)


# --- the model repository: hot loading and broken versions -------------------------------------------
def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def broken_version(repo: Path, version: int) -> None:
    tmp = repo / f".broken-{version}"
    (tmp / "variables").mkdir(parents=True)
    (tmp / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    tmp.rename(repo / str(version))


def test_hot_loading_and_broken_versions(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    repo = tmp_path / "generator"
    repo.mkdir()
    install(tiny_model(tmp_path_factory, 1), repo, 1)
    broken_version(repo, 2)  # newest version broken at start-up: the newest good one is served
    cfg = ServeConfig(str(repo), rest_port=0, grpc_port=None, host="127.0.0.1",
                      file_system_poll_wait_seconds=0.2)
    with serve(cfg) as handle:
        rest = Rest(handle.rest_port)

        def states() -> dict[str, tuple[str, str]]:
            _, doc = rest("GET", "/v1/models/generator")
            return {s["version"]: (s["state"], s["status"]["error_code"])
                    for s in doc["model_version_status"]}

        def png(version: str = "") -> bytes:
            path = f"/v1/models/generator{'/versions/' + version if version else ''}:predict"
            status, doc = rest("POST", path, {"signature_name": "png_from_seed", "instances": [77]})
            assert status == 200, doc
            return base64.b64decode(doc["predictions"][0]["b64"])

        assert states()["1"] == ("AVAILABLE", "OK")
        assert states()["2"][0] == "END" and states()["2"][1] != "OK"
        _, doc = rest("GET", "/v1/models/generator/versions/2")
        assert doc["model_version_status"][0]["status"]["error_message"]
        v1 = png()

        install(tiny_model(tmp_path_factory, 2), repo, 3)  # a new, good version: served without restart
        wait_for(lambda: states().get("3") == ("AVAILABLE", "OK"))
        wait_for(lambda: states()["1"] == ("END", "OK"))
        v3 = png()
        assert v3 != v1 and png("3") == v3
        assert rest("POST", "/v1/models/generator/versions/1:predict",
                    {"signature_name": "png_from_seed", "instances": [77]})[0] == 404

        broken_version(repo, 4)  # a broken new version does not take down the served one
        wait_for(lambda: "4" in states() and states()["4"][0] == "END")
        assert states()["4"][1] != "OK" and states()["3"] == ("AVAILABLE", "OK")
        assert png() == v3
        time.sleep(0.6)  # several polls later it is still not retried into service
        assert states()["3"] == ("AVAILABLE", "OK") and png() == v3

        shutil.rmtree(repo / "3")  # the served version is deleted: the newest one left that loads is served
        wait_for(lambda: states()["1"] == ("AVAILABLE", "OK"))
        assert states()["3"] == ("END", "OK") and png() == v1
        rest.conn.close()


@pytest.mark.slow
def test_serves_a_gcs_repository(tmp_path_factory: pytest.TempPathFactory, gcs_emulator) -> None:
    from medsynth import storage

    base = f"{gcs_emulator.create_bucket()}/models/generator"
    storage.publish_dir(tiny_model(tmp_path_factory, 1), f"{base}/1")
    partial = tmp_path_factory.mktemp("partial") / "5"
    shutil.copytree(tiny_model(tmp_path_factory, 2), partial)
    (partial / storage.MARKER).unlink()
    storage.upload_dir(partial, f"{base}/5")  # no marker: an upload still in progress
    cfg = ServeConfig(base, rest_port=0, grpc_port=None, host="127.0.0.1", file_system_poll_wait_seconds=0.3,
                      cache_dir=str(tmp_path_factory.mktemp("gcs-cache")))
    with serve(cfg) as handle:
        rest = Rest(handle.rest_port)
        _, doc = rest("GET", "/v1/models/generator")
        assert [s["version"] for s in doc["model_version_status"]] == ["1"]
        storage.publish_dir(tiny_model(tmp_path_factory, 2), f"{base}/2")
        wait_for(lambda: handle.repository.served_version() == 2)
        status, doc = rest("POST", PREDICT, {"signature_name": "png_from_seed", "instances": [3]})
        assert status == 200 and len(doc["predictions"]) == 1
        rest.conn.close()


@pytest.mark.slow
def test_cli_serve_stops_gracefully_on_sigterm(repo: Path, tmp_path: Path) -> None:
    from conftest import free_port

    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsynth.cli", "serve", "--model-base-path", str(repo),
         "--rest-port", str(port), "--grpc-port", "-1", "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
    )
    watchdog = threading.Timer(300, proc.kill)  # a hung server fails the test instead of blocking it
    watchdog.start()
    try:
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
            if line.startswith("serving generator"):
                break
        assert f"REST on 127.0.0.1:{port}" in line and "(version 1)" in line
        rest = Rest(port)
        assert rest("POST", PREDICT, {"signature_name": "png_from_seed", "instances": [1]})[0] == 200
        rest.conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
