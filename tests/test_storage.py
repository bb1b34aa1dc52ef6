"""medsynth.storage against a real GCS emulator and local disk: the same API, the same behaviour."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from medsynth import storage
from medsynth.errors import StorageError
from medsynth.storage import client as storage_client


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def dataset_like(seed: int, n_small: int = 120, big: int = 3 << 20) -> dict[str, bytes]:
    """Many small shards plus one multi-MB file, like datasets/<name>/<hash>/."""
    rng = random.Random(seed)
    files = {f"shards/shard-{i:05d}.tfrecord": rng.randbytes(rng.randint(1, 4096)) for i in range(n_small)}
    files["shards/empty.tfrecord"] = b""
    files["manifest.json"] = b'{"name": "phantom", "n": 121}\n'
    files["preview.png"] = rng.randbytes(big)
    return files


def saved_model_like(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "saved_model.pb": rng.randbytes(150_000),
        "fingerprint.pb": rng.randbytes(60),
        "variables/variables.index": rng.randbytes(900),
        "variables/variables.data-00000-of-00001": rng.randbytes(2_500_000),
        "assets/README.txt": b"synthetic images only\n",
    }


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root: a local directory or a prefix in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("gcs_bucket") + "/store"


def join(root: str, rel: str) -> str:
    return f"{root}/{rel}"


# -------------------------------------------------------------------------------------- single objects


def test_write_read_exists(root: str) -> None:
    uri = join(root, "a/b/blob.bin")
    assert not storage.exists(uri)
    assert storage.write_bytes(uri, b"\x00\x01payload") == uri
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    assert storage.exists(uri) and storage.exists(join(root, "a")) and storage.exists(join(root, "a/b"))
    assert not storage.exists(join(root, "a/b/blob"))  # a name prefix is not a directory
    storage.write_bytes(uri, b"second")
    assert storage.read_bytes(uri) == b"second"

    storage.write_json(join(root, "m.json"), {"b": 1, "a": [1, 2]})
    assert storage.read_json(join(root, "m.json")) == {"a": [1, 2], "b": 1}
    storage.write_text(join(root, "t.txt"), "héllo")
    assert storage.read_text(join(root, "t.txt")) == "héllo"

    with pytest.raises(StorageError, match="already exists"):
        storage.write_bytes(uri, b"third", overwrite=False)
    assert storage.read_bytes(uri) == b"second"
    storage.write_bytes(join(root, "new.bin"), b"n", overwrite=False)
    assert storage.read_bytes(join(root, "new.bin")) == b"n"

    missing = join(root, "nope.json")
    with pytest.raises(StorageError) as e:
        storage.read_json(missing)
    assert str(e.value) == f"{missing}: not found"
    storage.write_bytes(join(root, "bad.json"), b"{not json")
    with pytest.raises(StorageError, match=r"bad\.json: not valid JSON"):
        storage.read_json(join(root, "bad.json"))


def test_list_uris(root: str) -> None:
    for rel in ["x/2.tfrecord", "x/1.tfrecord", "x/sub/3.tfrecord", "x/notes.txt", f"x/{storage.MARKER}",
                f"x/ckpt-1.{storage.MARKER}"]:
        storage.write_bytes(join(root, rel), rel.encode())
    assert storage.list_uris(join(root, "x")) == [join(root, r) for r in
                                                  ["x/1.tfrecord", "x/2.tfrecord", "x/notes.txt",
                                                   "x/sub/3.tfrecord"]]
    assert storage.list_uris(join(root, "x"), suffix=".tfrecord") == [
        join(root, "x/1.tfrecord"), join(root, "x/2.tfrecord"), join(root, "x/sub/3.tfrecord")]
    assert storage.list_uris(join(root, "x/notes.txt")) == [join(root, "x/notes.txt")]
    assert storage.list_uris(join(root, "missing")) == []


def test_local_listing_hides_in_flight_temp_files(tmp_path: Path) -> None:
    make_tree(tmp_path / "d", {"a.bin": b"a", ".a.bin.x1y2.tmp": b"half", ".d.abc.tmp/z.bin": b"half"})
    assert storage.list_uris(tmp_path / "d") == [str(tmp_path / "d" / "a.bin")]


# ----------------------------------------------------------------------------------------- directories


def test_publish_download_republish(root: str, tmp_path: Path) -> None:
    v1 = {"a.txt": b"one", "sub/b.bin": os.urandom(5000), "sub/deeper/c.bin": b""}
    src = make_tree(tmp_path / "v1", v1)
    uri = join(root, "models/gen/1")
    assert not storage.is_complete(uri)
    assert storage.publish_dir(src, uri) == uri
    assert storage.is_complete(uri)
    assert storage.list_uris(uri) == sorted(join(uri, r) for r in v1)

    out = storage.download_dir(uri, tmp_path / "out")
    assert out == tmp_path / "out"
    assert read_tree(out) == {**v1, storage.MARKER: b""}
    assert storage.is_complete(out)

    # Republish different content: stale files go, the marker comes back last.
    v2 = {"a.txt": b"two", "new.bin": b"n"}
    storage.publish_dir(make_tree(tmp_path / "v2", v2), uri)
    assert storage.is_complete(uri)
    assert storage.list_uris(uri) == sorted(join(uri, r) for r in v2)
    storage.download_dir(uri, tmp_path / "out")  # replaces the earlier download whole
    assert read_tree(tmp_path / "out") == {**v2, storage.MARKER: b""}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_upload_dir_adds_without_marker(root: str, tmp_path: Path) -> None:
    uri = join(root, "runs/r1")
    storage.write_bytes(join(uri, "keep.txt"), b"k")
    assert storage.upload_dir(make_tree(tmp_path / "d", {"a": b"1", "s/b": b"2"}), uri) == 2
    assert storage.exists(uri) and not storage.is_complete(uri)  # readers ignore it
    assert storage.list_uris(uri) == [join(uri, "a"), join(uri, "keep.txt"), join(uri, "s/b")]
    with pytest.raises(StorageError, match="not a directory"):
        storage.upload_dir(tmp_path / "missing", uri)


def test_copy_tree_every_combination(gcs_bucket: str, tmp_path: Path) -> None:
    files = {"x.bin": os.urandom(3000), "d/y.bin": os.urandom(10), "d/e/z": b"z"}
    local_src = storage.publish_dir(make_tree(tmp_path / "src", files), str(tmp_path / "published"))
    assert storage.is_complete(local_src)
    hops = [local_src, f"{gcs_bucket}/a", f"{gcs_bucket}/b/c", str(tmp_path / "back"),
            str(tmp_path / "again")]
    for src, dst in zip(hops, hops[1:], strict=False):
        assert storage.copy_tree(src, dst) == dst
        assert storage.is_complete(dst), (src, dst)
        assert storage.list_uris(dst) == sorted(f"{dst}/{r}" for r in files)
    assert read_tree(tmp_path / "again") == {**files, storage.MARKER: b""}

    # An incomplete source gives an incomplete copy.
    storage.upload_dir(make_tree(tmp_path / "partial", {"p": b"p"}), f"{gcs_bucket}/partial")
    storage.copy_tree(f"{gcs_bucket}/partial", f"{gcs_bucket}/partial-copy")
    storage.copy_tree(f"{gcs_bucket}/partial", str(tmp_path / "partial-copy"))
    assert not storage.is_complete(f"{gcs_bucket}/partial-copy")
    assert not storage.is_complete(tmp_path / "partial-copy")
    assert storage.read_bytes(f"{gcs_bucket}/partial-copy/p") == b"p"

    with pytest.raises(StorageError, match="overlap"):
        storage.copy_tree(f"{gcs_bucket}/a", f"{gcs_bucket}/a/inside")
    with pytest.raises(StorageError, match="nothing there"):
        storage.copy_tree(f"{gcs_bucket}/empty", str(tmp_path / "x"))


def test_delete_prefix(root: str) -> None:
    uri = join(root, "d")
    for rel in ["a", "b/c", storage.MARKER]:
        storage.write_bytes(join(uri, rel), b"1")
    storage.write_bytes(join(root, "d-sibling"), b"keep")
    assert storage.delete_prefix(uri) == 3
    assert not storage.exists(uri) and not storage.is_complete(uri)
    assert storage.read_bytes(join(root, "d-sibling")) == b"keep"
    assert storage.delete_prefix(uri) == 0
    assert storage.delete_prefix(join(root, "d-sibling")) == 1


def test_fetch_gives_local_paths_and_reuses_complete_downloads(gcs_bucket: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    local = make_tree(tmp_path / "local", {"m.json": b"{}"})
    assert storage.fetch(local, cache) == local  # local paths are used in place
    with pytest.raises(StorageError, match="not found"):
        storage.fetch(tmp_path / "nope", cache)

    files = saved_model_like(1)
    uri = storage.publish_dir(make_tree(tmp_path / "sm", files), f"{gcs_bucket}/models/gen/3")
    got = storage.fetch(uri, cache)
    assert got.is_dir() and got.name == "3" and cache in got.parents
    assert read_tree(got) == {**files, storage.MARKER: b""}
    one = storage.fetch(f"{uri}/saved_model.pb", cache)
    assert one.name == "saved_model.pb" and one.read_bytes() == files["saved_model.pb"]

    storage.delete_prefix(uri)  # a complete cached copy is reused without asking object storage
    assert storage.fetch(uri, cache) == got and read_tree(got)["saved_model.pb"] == files["saved_model.pb"]
    assert storage.fetch(f"{uri}/saved_model.pb", cache) == one

    # An unmarked prefix: refused when completeness is required, re-downloaded otherwise.
    part = f"{gcs_bucket}/datasets/d/h1"
    storage.upload_dir(make_tree(tmp_path / "p1", {"a": b"1"}), part)
    with pytest.raises(StorageError, match="incomplete"):
        storage.fetch(part, cache, require_complete=True)
    assert read_tree(storage.fetch(part, cache)) == {"a": b"1"}
    storage.upload_dir(make_tree(tmp_path / "p2", {"b": b"2", storage.MARKER: b""}), part)
    assert read_tree(storage.fetch(part, cache, require_complete=True)) == {"a": b"1", "b": b"2",
                                                                             storage.MARKER: b""}
    with pytest.raises(StorageError, match="not found"):
        storage.fetch(f"{gcs_bucket}/never", cache)


# ----------------------------------------------------------------------------------------- checkpoints


def fake_checkpoint(d: Path, step: int, ckpts: list[int]) -> None:
    """What tf.train.CheckpointManager leaves: data, index, then the `checkpoint` state file."""
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(step)
    (d / f"ckpt-{step}.data-00000-of-00001").write_bytes(rng.randbytes(20_000))
    (d / f"ckpt-{step}.index").write_bytes(rng.randbytes(300))
    time.sleep(0.01)  # distinct mtimes, as between TF's writes
    state = "".join(f'all_model_checkpoint_paths: "ckpt-{c}"\n' for c in ckpts)
    (d / "checkpoint").write_text(f'model_checkpoint_path: "ckpt-{ckpts[-1]}"\n{state}')


def test_sync_up_and_down_resume_on_another_node(root: str, tmp_path: Path) -> None:
    node_a, uri = tmp_path / "node-a", join(root, "runs/r/ckpt")
    fake_checkpoint(node_a, 1, [1])
    assert storage.sync_up(node_a, uri) == ["ckpt-1", "checkpoint"]  # the state file goes last
    assert storage.sync_up(node_a, uri) == []  # nothing new
    fake_checkpoint(node_a, 2, [1, 2])
    assert storage.sync_up(node_a, uri) == ["ckpt-2", "checkpoint"]
    for m in ["ckpt-1", "ckpt-2", "checkpoint"]:
        assert storage.exists(join(uri, f"{m}.{storage.MARKER}"))

    # A checkpoint whose upload never finished has no marker: the other node skips it.
    storage.write_bytes(join(uri, "ckpt-3.data-00000-of-00001"), b"half")
    node_b = tmp_path / "node-b"
    assert storage.sync_down(uri, node_b) == ["checkpoint", "ckpt-1", "ckpt-2"]
    assert {k: v for k, v in read_tree(node_b).items() if not k.endswith(storage.MARKER)} == read_tree(node_a)
    assert not (node_b / "ckpt-3.data-00000-of-00001").exists()
    assert storage.sync_down(uri, node_b) == ["checkpoint", "ckpt-1", "ckpt-2"]  # idempotent

    # Directory-style checkpoints work the same way.
    make_tree(node_a, {"step-5/weights.bin": b"w" * 100, "step-5/meta.json": b"{}"})
    assert "step-5" in storage.sync_up(node_a, uri)
    assert storage.is_complete(join(uri, "step-5"))


# ------------------------------------------------------------------------------------ marker semantics


@pytest.mark.usefixtures("fast_retries")
def test_interrupted_publish_is_not_complete(gcs_bucket: str, gcs_emulator, fault_proxy, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{gcs_bucket}/datasets/phantom/abc"
    v1 = dataset_like(1, n_small=20, big=1000)
    storage.publish_dir(make_tree(tmp_path / "v1", v1), uri)
    assert storage.is_complete(uri)

    # Republish; object storage goes away halfway (every request after the 12th answers 503).
    monkeypatch.setattr(storage_client, "RETRY_SETTINGS", storage.RetrySettings(0.01, 0.05, 2.0, 0.5))
    proxy = fault_proxy(fail_after=12)
    v2 = dataset_like(2, n_small=20, big=1000)
    with pytest.raises(StorageError, match=r"failed \(HTTP 503\) after retrying"):
        storage.publish_dir(make_tree(tmp_path / "v2", v2), uri)
    assert proxy.stats["outage"] > 0

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    # The old marker went first and the new one never came: readers ignore the prefix.
    assert storage.exists(uri) and not storage.is_complete(uri)
    with pytest.raises(StorageError, match="incomplete"):
        storage.fetch(uri, tmp_path / "cache", require_complete=True)
    storage.publish_dir(tmp_path / "v2", uri)  # rerunning the step finishes the job
    assert storage.is_complete(uri)
    assert read_tree(storage.download_dir(uri, tmp_path / "got")) == {**v2, storage.MARKER: b""}


# ---------------------------------------------------------------------------------------------- faults


@pytest.mark.usefixtures("fast_retries")
def test_transfers_survive_a_flaky_network(gcs_bucket: str, gcs_emulator, fault_proxy, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from faultproxy import KINDS

    data = dataset_like(7, big=9 << 20)  # over 8 MiB: a resumable upload, not a single multipart request
    model = saved_model_like(7)
    proxy = fault_proxy(rate=0.25, seed=1234)
    ds_uri, sm_uri = f"{gcs_bucket}/datasets/phantom/h7", f"{gcs_bucket}/models/gen/1"

    storage.publish_dir(make_tree(tmp_path / "ds", data), ds_uri)
    storage.publish_dir(make_tree(tmp_path / "sm", model), sm_uri)
    assert storage.is_complete(ds_uri) and storage.is_complete(sm_uri)
    assert read_tree(storage.download_dir(ds_uri, tmp_path / "ds-back")) == {**data, storage.MARKER: b""}
    assert read_tree(storage.download_dir(sm_uri, tmp_path / "sm-back")) == {**model, storage.MARKER: b""}
    assert read_tree(storage.fetch(sm_uri, tmp_path / "cache")) == {**model, storage.MARKER: b""}
    storage.copy_tree(sm_uri, f"{gcs_bucket}/models/gen/2")
    assert storage.read_bytes(f"{gcs_bucket}/models/gen/2/variables/variables.data-00000-of-00001") == \
        model["variables/variables.data-00000-of-00001"]
    fake_checkpoint(tmp_path / "ck", 1, [1])
    assert storage.sync_up(tmp_path / "ck", f"{gcs_bucket}/ck") == ["ckpt-1", "checkpoint"]
    assert storage.sync_down(f"{gcs_bucket}/ck", tmp_path / "ck-back") == ["checkpoint", "ckpt-1"]
    assert storage.delete_prefix(f"{gcs_bucket}/models/gen/2") == len(model) + 1

    # Every kind of fault really happened, and often.
    assert proxy.faults >= 40, proxy.stats
    assert all(proxy.stats[k] > 0 for k in KINDS), proxy.stats
    # What the flaky path wrote is what a clean path reads.
    proxy.stop()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    assert read_tree(storage.download_dir(ds_uri, tmp_path / "ds-clean")) == {**data, storage.MARKER: b""}
    assert not storage.exists(f"{gcs_bucket}/models/gen/2")


def test_faults_are_deterministic_per_seed(gcs_emulator) -> None:
    from faultproxy import FaultProxy

    def draws(seed: int) -> list[str | None]:
        p = FaultProxy(gcs_emulator.endpoint, rate=0.3, seed=seed)
        try:
            return [p.decide("GET") for _ in range(200)]
        finally:
            p.stop()

    assert draws(5) == draws(5) != draws(6)
    assert 0.2 < sum(d is not None for d in draws(5)) / 200 < 0.4


# ---------------------------------------------------------------------------------------------- errors


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_missing_bucket(gcs_emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    d = make_tree(tmp_path / "d", {"a": b"1"})
    uri = "gs://no-such-bucket-x/p/f.bin"
    for call in [lambda: storage.read_bytes(uri), lambda: storage.write_bytes(uri, b"x"),
                 lambda: storage.list_uris("gs://no-such-bucket-x/p"),
                 lambda: storage.publish_dir(d, "gs://no-such-bucket-x/p"),
                 lambda: storage.download_dir("gs://no-such-bucket-x/p", tmp_path / "o"),
                 lambda: storage.sync_up(d, "gs://no-such-bucket-x/p")]:
        with pytest.raises(StorageError) as e:
            call()
        msg = one_line(e)
        assert msg.startswith("gs://no-such-bucket-x/p") and "bucket 'no-such-bucket-x' does not exist" in msg
    assert not storage.exists("gs://no-such-bucket-x")


def test_bucket_not_writable(gcs_bucket: str, fault_proxy, tmp_path: Path) -> None:
    storage.write_bytes(f"{gcs_bucket}/readable.txt", b"r")
    fault_proxy(forbid_writes=True)
    assert storage.read_bytes(f"{gcs_bucket}/readable.txt") == b"r"
    with pytest.raises(StorageError) as e:
        storage.publish_dir(make_tree(tmp_path / "d", {"a": b"1"}), f"{gcs_bucket}/out")
    msg = one_line(e)
    assert msg.startswith(f"{gcs_bucket}/out") and "permission denied" in msg and "roles/storage" in msg
    assert not storage.is_complete(f"{gcs_bucket}/out")


@pytest.mark.usefixtures("fast_retries")
def test_unreachable_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import free_port

    monkeypatch.setattr(storage_client, "RETRY_SETTINGS", storage.RetrySettings(0.01, 0.05, 2.0, 0.5))
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://user:s3cr3t@127.0.0.1:{free_port()}")
    with pytest.raises(StorageError) as e:
        storage.read_bytes("gs://bkt/x.json")
    msg = one_line(e)
    assert msg.startswith("gs://bkt/x.json: cannot read: object storage at http://127.0.0.1:") and \
        "after retrying" in msg
    assert "s3cr3t" not in msg


def test_no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing-key.json"))
    with pytest.raises(StorageError, match="no Google Cloud credentials found") as e:
        storage.read_bytes("gs://bkt/x")
    one_line(e)


@pytest.mark.parametrize("bad", ["gs://", "gs:///x", "gs://UPPER/x", "gs://bkt/x//y", "gs://bkt/../x",
                                 "s3://b/x", ""])
def test_malformed_uris(bad: str) -> None:
    with pytest.raises(StorageError):
        storage.exists(bad)


def test_refuses_to_delete_roots(gcs_bucket: str) -> None:
    with pytest.raises(StorageError, match="whole bucket"):
        storage.delete_prefix(gcs_bucket)
    with pytest.raises(StorageError, match="filesystem root"):
        storage.delete_prefix("/")


def test_atomic_directory_replaces_only_when_done(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with storage.atomic_directory(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), storage.atomic_directory(target) as d:
        (d / "a").write_text("2")
        raise RuntimeError("writer died")
    assert read_tree(target) == {"a": b"1", storage.MARKER: b""}
    with storage.atomic_directory(target) as d:
        (d / "b").write_text("3")
    assert read_tree(target) == {"b": b"3", storage.MARKER: b""}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
