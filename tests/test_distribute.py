"""Strategies on this CPU: Mirrored, MultiWorkerMirrored and Horovod compute what one device computes.

Each run is a fresh process (tests/train_worker.py): TensorFlow fixes its devices at start-up, and
multi-worker runs need one process per worker. The runs train a tiny GAN (32 px, width-2 generator)
for a few steps on the same prepared phantom data; all variables of G and D (weights and BN moving
statistics) are compared. The backbone is a frozen, randomly initialised ResNet50: its features
are healthy at 32 px (a random MobileNet's vanish, and a trainable one at this size is so
ill-conditioned that float32 rounding alone moves its gradients by percents).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from medsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("train_worker.py")
STEPS, BATCH = 2, 8
# Adam moves each weight by about lr * sign(gradient) in its first steps, so an element whose gradient
# is ~0 can move either way when summation order changes (DESIGN §3): a few elements may differ by up
# to 2 lr per step (measured: 1.6e-4 for one of 4,096 after 2 steps); nearly all must agree to 1e-5.
LR = 2e-4  # TrainConfig's default for both optimizers
TOL = dict(rtol=1e-4, atol=2 * LR * STEPS)
STRICT, STRICT_SHARE = 1e-5, 0.01
TIMEOUT = 900


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    from medsynth.data.prepare import PrepareConfig, prepare

    root = tmp_path_factory.mktemp("data")
    return str(
        prepare(PrepareConfig(source="builtin://phantom", out=str(root), image_size=32, phantom_frames=48))
    )


def _config(data: str, out: Path, **kw) -> dict:
    cfg = dict(
        data=data,
        out=str(out),
        image_size=32,
        steps=STEPS,
        batch_size=BATCH,
        seed=11,
        checkpoint_every=STEPS,
        backbone="resnet50",
        backbone_mode="frozen",
        backbone_weights="none",
        latent_dim=16,
        generator_width=2,
        log_every=1,
        # float32 throughout: bfloat16 convolutions (medsynth.train.fastpath, on AVX512_BF16 CPUs)
        # round differently when a batch is split, past these tolerances
        mixed_precision="off",
    )
    cfg.update(kw)
    return cfg


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK")
    }
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


def _start(cfg: dict, dump: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(cfg), str(dump), *args],
        env=env or _env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(*procs: subprocess.Popen) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, out[-4000:]


def _load(prefix: Path, worker: int = 0) -> tuple[list[np.ndarray], dict]:
    with np.load(f"{prefix}-{worker}.npz") as z:
        arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
    return arrays, json.loads(Path(f"{prefix}-{worker}.json").read_text())


def _assert_close(a: list[np.ndarray], b: list[np.ndarray], exact: bool = False) -> None:
    assert len(a) == len(b)
    off = total = 0
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if exact:
            np.testing.assert_array_equal(x, y, err_msg=f"variable {i}")
        else:
            np.testing.assert_allclose(x, y, **TOL, err_msg=f"variable {i}")
            off += int(np.sum(np.abs(x - y) > STRICT + 1e-4 * np.abs(y)))
            total += x.size
    assert off <= STRICT_SHARE * max(total, 1), f"{off} of {total} values differ by more than {STRICT}"


@pytest.fixture(scope="module")
def one_device(dataset, tmp_path_factory) -> list[np.ndarray]:
    """The reference: one device, the same global batch."""
    tmp = tmp_path_factory.mktemp("one")
    # synchronised BN on one replica too: the fused kernel's variance differs in the last bits,
    # which Adam amplifies past the tolerance (the default on one replica is fused, for speed)
    cfg = _config(dataset, tmp / "runs/r/one", strategy="one", batch_norm="synchronized")
    _finish(_start(cfg, tmp / "one"))
    weights, info = _load(tmp / "one")
    assert info["settings"]["replicas"] == 1 and info["step"] == STEPS
    return weights


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_equals_one_device(dataset, one_device, tmp_path):
    _finish(
        _start(
            _config(dataset, tmp_path / "runs/r/m", strategy="mirrored"),
            tmp_path / "m",
            "--logical-cpus",
            "2",
        )
    )
    weights, info = _load(tmp_path / "m")
    assert info["settings"]["strategy"] == "mirrored" and info["settings"]["replicas"] == 2
    _assert_close(weights, one_device)
    # Steps were taken (comparing two untrained copies would prove nothing).
    assert info["metrics"]["steps_this_run"] == STEPS and np.isfinite(info["metrics"]["final_g_loss"])


@pytest.mark.slow
def test_multiworker_mirrored_with_two_processes_agrees(dataset, one_device, tmp_path):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = tmp_path / "runs/r/mw"
    procs = [
        _start(
            _config(dataset, out, strategy="auto"),
            tmp_path / "mw",
            env=_env(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})),
        )
        for i in range(2)
    ]
    _finish(*procs)
    w0, info0 = _load(tmp_path / "mw", 0)
    w1, info1 = _load(tmp_path / "mw", 1)
    assert info0["settings"]["strategy"] == "multiworker" and info0["settings"]["replicas"] == 2
    _assert_close(w0, w1, exact=True)  # every worker holds the same numbers
    _assert_close(w0, one_device)  # and they are the one-device numbers
    # Only the chief wrote: one run directory, with its checkpoint and metrics.
    assert (out / "metrics.json").exists() and (out / "checkpoints" / "checkpoint").exists()


def _horovod_available() -> bool:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return shutil.which("horovodrun", path=str(Path(sys.executable).parent)) is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not _horovod_available(),
    reason="horovod is not importable in this venv: run .ci/install-horovod.sh (CI does)",
)
def test_horovod_ranks_end_identical_and_equal_one_device(dataset, one_device, tmp_path):
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    cfg = _config(dataset, tmp_path / "runs/r/hvd", strategy="auto")  # auto: launched by horovodrun
    cmd = [
        horovodrun,
        "-np",
        "2",
        "-H",
        "localhost:2",
        "--gloo",
        sys.executable,
        str(WORKER),
        json.dumps(cfg),
        str(tmp_path / "hvd"),
    ]
    env = _env(PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    w0, info0 = _load(tmp_path / "hvd", 0)
    w1, _ = _load(tmp_path / "hvd", 1)
    assert info0["settings"]["strategy"] == "horovod" and info0["settings"]["replicas"] == 2
    _assert_close(w0, w1, exact=True)
    _assert_close(w0, one_device)


# --- bad input: clear one-line errors, no training started ------------------------------------------


def test_unknown_strategy_is_refused():
    from medsynth.train.strategy import resolve_strategy_name

    with pytest.raises(ConfigError, match="unknown --strategy 'magic'"):
        resolve_strategy_name("magic")


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "not in its cluster"),
        ('{"cluster": "a:1", "task": {"type": "worker", "index": 0}}', 'no "cluster"'),
    ],
)
def test_bad_tf_config_is_refused(text, match):
    from medsynth.train.strategy import parse_tf_config, resolve_strategy_name

    with pytest.raises(ConfigError, match=match):
        parse_tf_config({"TF_CONFIG": text})
    with pytest.raises(ConfigError, match=match):
        resolve_strategy_name("auto", {"TF_CONFIG": text})


def test_auto_picks_by_launcher_and_cluster():
    from medsynth.train.strategy import resolve_strategy_name

    two = json.dumps({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}})
    one = json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}})
    assert resolve_strategy_name("auto", {"HOROVOD_RANK": "0"}) == "horovod"
    assert resolve_strategy_name("auto", {"OMPI_COMM_WORLD_RANK": "1", "TF_CONFIG": two}) == "horovod"
    assert resolve_strategy_name("auto", {"TF_CONFIG": two}) == "multiworker"
    assert resolve_strategy_name("auto", {"TF_CONFIG": one}) == "one"  # no GPU here
    assert resolve_strategy_name("auto", {}) == "one"
    assert resolve_strategy_name("mirrored", {}) == "mirrored"


def test_more_gpus_than_visible_is_refused_and_so_is_an_unsplittable_batch():
    from medsynth.train.strategy import Distribution, _pick_gpus

    with pytest.raises(
        ConfigError, match="--gpus 2 asked for more GPUs than this machine shows \\(0 visible"
    ):
        _pick_gpus(2, [])
    assert _pick_gpus(None, []) == []
    with pytest.raises(ConfigError, match="does not split over 4 replicas"):
        Distribution("multiworker", strategy=None, workers=2, local_replicas=2).check_batch(6)


def test_cli_reports_bad_strategy_and_gpus_in_one_line(tmp_path):
    env = _env()
    for flags, match in [
        (["--strategy", "magic"], "unknown --strategy 'magic'"),
        (["--gpus", "3"], "--gpus 3 asked for more GPUs"),
        (["--strategy", "multiworker"], "needs TF_CONFIG"),
    ]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "medsynth.cli",
                "train",
                "--data",
                "builtin://phantom",
                "--out",
                str(tmp_path / "o"),
                "--backbone-weights",
                "none",
                *flags,
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("medsynth train: error:")]
        assert len(lines) == 1 and match in lines[0], proc.stderr[-2000:]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "medsynth.cli",
            "train",
            "--data",
            "builtin://phantom",
            "--out",
            str(tmp_path / "o"),
        ],
        env={**env, "TF_CONFIG": "{oops"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "TF_CONFIG is not valid JSON" in bad.stderr
