"""The client (`medsynth generate`): reproducible seeds, splitting, retries, files marked synthetic."""

from __future__ import annotations

import base64
import io
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pydicom
import pytest
from http_fake import FakeServer, send_json
from PIL import Image

from medsynth.data.dicom_writer import read_provenance
from medsynth.errors import ConfigError, ServingError
from medsynth.pictures import png_bytes
from medsynth.serving.app import ServeConfig
from medsynth.serving.client import Client, GeneratedImage, image_seed, write_images
from medsynth.serving.export import export_random_generator
from medsynth.serving.server import serve

SIZE, LATENT, MAX_IMAGES = 16, 8, 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    model = tmp_path_factory.getbasetemp() / "serving-models" / "seed1"  # shared with test_serving.py
    if not (model / "saved_model.pb").exists():
        export_random_generator(model, image_size=SIZE, latent_dim=LATENT, width=2, seed=1)
    repo = tmp_path_factory.mktemp("client-repo")
    (repo / "3").symlink_to(model, target_is_directory=True)
    handle = serve(ServeConfig(str(repo), rest_port=0, grpc_port=0, host="127.0.0.1",
                               file_system_poll_wait_seconds=0, max_images_per_request=MAX_IMAGES))
    yield handle
    handle.stop()


@pytest.fixture()
def rest_client(server) -> Client:
    with Client(endpoint=f"http://127.0.0.1:{server.rest_port}", max_per_request=3) as c:
        yield c


@pytest.fixture()
def grpc_client(server) -> Client:
    with Client(grpc=f"127.0.0.1:{server.grpc_port}", max_per_request=16) as c:
        yield c


def test_image_seed_is_documented_and_checked() -> None:
    assert image_seed(0, 0) == 0
    assert image_seed(5, 7) == 5 * 2**32 + 7
    assert image_seed(2**31 - 1, 2**32 - 1) == 2**63 - 1  # still an int64
    for bad in ((-1, 0), (2**31, 0), (0, -1), (0, 2**32)):
        with pytest.raises(ConfigError):
            image_seed(*bad)


def test_generate_is_reproducible_across_protocols_and_splits(rest_client: Client,
                                                              grpc_client: Client) -> None:
    over_rest = rest_client.generate(7, seed=11)  # 3 + 3 + 1 images per request
    over_grpc = grpc_client.generate(7, seed=11)  # one request
    assert [i.png for i in over_rest] == [i.png for i in over_grpc]
    assert len({i.png for i in over_rest}) == 7
    assert [(i.model, i.version, i.seed, i.index) for i in over_rest] == [
        ("generator", 3, 11, k) for k in range(7)]
    first = rest_client.generate(2, seed=11)
    assert [i.png for i in first] == [i.png for i in over_rest[:2]]
    assert [i.png for i in rest_client.generate(7, seed=12)] != [i.png for i in over_rest]
    for img in over_rest:
        assert img.pixels.dtype == np.uint8 and img.pixels.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(img.png))), img.pixels)


def test_generate_without_seed_records_the_one_it_drew(rest_client: Client) -> None:
    images = rest_client.generate(2)
    seed = images[0].seed
    assert 0 <= seed < 2**31 and images[1].seed == seed
    assert [i.png for i in rest_client.generate(2, seed=seed)] == [i.png for i in images]


def test_status_version_and_client_errors(rest_client: Client, grpc_client: Client, server) -> None:
    assert rest_client.served_version() == grpc_client.served_version() == 3
    assert rest_client.status()[0]["state"] == "AVAILABLE"
    assert rest_client.generate(1, seed=1, version=3)[0].version == 3
    for client in (rest_client, grpc_client):
        with pytest.raises(ServingError, match="404|NOT_FOUND"):
            client.generate(1, seed=1, version=9)
        for bad in (0, -3):
            with pytest.raises(ConfigError, match="at least one"):
                client.generate(bad)
        with pytest.raises(ConfigError, match="--seed"):
            client.generate(1, seed=-1)
    too_big = Client(endpoint=f"127.0.0.1:{server.rest_port}", max_per_request=MAX_IMAGES + 1, retries=0)
    with pytest.raises(ServingError, match="--max-images-per-request"):
        too_big.generate(MAX_IMAGES + 1, seed=0)
    with pytest.raises(ConfigError):
        Client()
    with pytest.raises(ConfigError):
        Client(endpoint="ftp://somewhere")
    with pytest.raises(ServingError, match="no-such-model|not found|NOT_FOUND|404"):
        Client(endpoint=f"http://127.0.0.1:{server.rest_port}", model="no-such-model").generate(1, seed=0)


# --- retries, against a fake endpoint that fails on purpose -------------------------------------------------
class FlakyServer:
    """A REST endpoint answering `failures` with the given status before it answers properly."""

    def __init__(self, failures: list[int]) -> None:
        self.failures = list(failures)
        self.predicts = 0
        self.png = png_bytes(np.full((4, 4), 9, np.uint8))
        self.http = FakeServer(self._handle).start()
        self.port = self.http.port

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        if h.command == "GET":
            version = {"version": "2", "state": "AVAILABLE",
                       "status": {"error_code": "OK", "error_message": ""}}
            return send_json(h, 200, {"model_version_status": [version]})
        n = len(json.loads(h.rfile.read(int(h.headers["Content-Length"])))["instances"])
        self.predicts += 1
        if self.failures:
            return send_json(h, self.failures.pop(0), {"error": "try again later"})
        return send_json(h, 200, {"predictions": [{"b64": base64.b64encode(self.png).decode()}] * n})

    def close(self) -> None:
        self.http.stop()


@pytest.mark.parametrize("failures,ok", [([503, 429, 503], True), ([503] * 5, False), ([400], False)])
def test_transient_errors_are_retried_with_backoff(failures: list[int], ok: bool) -> None:
    fake = FlakyServer(failures)
    try:
        client = Client(endpoint=f"http://127.0.0.1:{fake.port}", retries=3, backoff=0.01)
        if ok:
            images = client.generate(2, seed=1)
            assert [i.version for i in images] == [2, 2] and fake.predicts == len(failures) + 1
        else:
            with pytest.raises(ServingError, match="try again later"):
                client.generate(2, seed=1)
            assert fake.predicts == (4 if failures[0] == 503 else 1)  # 400 is not retried
    finally:
        fake.close()


def test_connection_errors_are_retried_then_reported() -> None:
    from conftest import free_port

    port = free_port()  # nothing listens there
    with pytest.raises(ServingError, match="still failing after 2 retries"):
        Client(endpoint=f"http://127.0.0.1:{port}", retries=2, backoff=0.01).generate(1, seed=0)
    with pytest.raises(ServingError, match="UNAVAILABLE"):
        Client(grpc=f"127.0.0.1:{port}", retries=1, backoff=0.01, timeout=5).generate(1, seed=0)


# --- files ---------------------------------------------------------------------------------------------
def test_write_png_and_dicom_with_provenance(rest_client: Client, tmp_path: Path) -> None:
    images = rest_client.generate(2, seed=5)
    pngs = write_images(images, tmp_path / "png")
    assert [p.name for p in pngs] == ["generator-v3-seed5-000000.png", "generator-v3-seed5-000001.png"]
    for path, img in zip(pngs, images, strict=True):
        with Image.open(path) as f:
            assert f.text["medsynth:synthetic"] == "true"
            assert (f.text["medsynth:model"], f.text["medsynth:version"]) == ("generator", "3")
            assert (f.text["medsynth:seed"], f.text["medsynth:index"]) == ("5", str(img.index))
            assert f.text["medsynth:image_seed"] == str(image_seed(5, img.index))
            np.testing.assert_array_equal(np.asarray(f), img.pixels)

    dicoms = write_images(images, tmp_path / "dcm", fmt="dicom")
    for path, img in zip(dicoms, images, strict=True):
        ds = pydicom.dcmread(path)
        assert ds.ConversionType == "SYN" and "SYNTHETIC" in ds.SeriesDescription
        assert str(ds.PatientName) == "SYNTHETIC" and not ds.PatientBirthDate
        assert "DERIVED" in ds.ImageType
        np.testing.assert_array_equal(ds.pixel_array, img.pixels)
        prov = read_provenance(ds)
        assert prov["medsynth:synthetic"] == "true" and prov["medsynth:seed"] == "5"
        assert prov["medsynth:version"] == "3" and prov["medsynth:index"] == str(img.index)
    again = write_images(images, tmp_path / "dcm2", fmt="dicom")  # same run, same UIDs
    assert pydicom.dcmread(again[0]).SOPInstanceUID == pydicom.dcmread(dicoms[0]).SOPInstanceUID
    with pytest.raises(ConfigError, match="--format"):
        write_images(images, tmp_path / "x", fmt="jpeg")


def test_generated_image_provenance() -> None:
    img = GeneratedImage(np.zeros((2, 2), np.uint8), b"", "g", 4, 9, 3)
    assert img.provenance()["medsynth:image_seed"] == str(9 * 2**32 + 3)


# --- CLI -----------------------------------------------------------------------------------------------
def test_cli_generate(server, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from medsynth.cli import main

    rest = ["generate", "--endpoint", f"http://127.0.0.1:{server.rest_port}", "--seed", "21", "-n", "5",
            "--max-per-request", "2"]
    assert main([*rest, "--out", str(tmp_path / "a")]) == 0
    assert "wrote 5 synthetic PNG images" in capsys.readouterr().out
    assert main(["generate", "--grpc", f"127.0.0.1:{server.grpc_port}", "--seed", "21", "-n", "2",
                 "--format", "dicom", "--out", str(tmp_path / "b")]) == 0
    written = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert written == [f"generator-v3-seed21-{k:06d}.png" for k in range(5)]
    assert len(list((tmp_path / "b").glob("*.dcm"))) == 2
    dcm = pydicom.dcmread(tmp_path / "b" / "generator-v3-seed21-000001.dcm")
    with Image.open(tmp_path / "a" / "generator-v3-seed21-000001.png") as png:
        np.testing.assert_array_equal(dcm.pixel_array, np.asarray(png))  # same image over REST and gRPC
    capsys.readouterr()
    assert main([*rest, "--seed", "-4", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seed -4" in err[0]
    assert main(["generate", "--out", str(tmp_path / "d")]) == 2
