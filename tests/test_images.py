"""images/: the Dockerfiles, read statically (no Docker engine here), and components/images.py.

Every COPY source exists and survives .dockerignore, base images are pinned by tag, the images run as
a non-root uid that the manifests also use, the TensorFlow/Horovod/TF Serving versions agree with the
pins in pyproject.toml, and every KFP component names one of these images.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from components import images
from medsynth import __version__
from medsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
IDS = [p.parent.name for p in DOCKERFILES]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        op, _, rest = line.partition(" ")
        out.append((op.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return out


def _stages(path: Path) -> list[dict]:
    """One dict per build stage: its FROM image, alias, and instructions."""
    stages: list[dict] = []
    args = {}
    for op, rest in instructions(path):
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        if op == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append({"image": image, "alias": alias, "ops": []})
        elif stages:
            stages[-1]["ops"].append((op, rest))
    return stages


def _arg_default(path: Path, name: str) -> str | None:
    for op, rest in instructions(path):
        if op == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1].strip('"')
    return None


def _copy_sources(rest: str) -> list[str] | None:
    """Sources of a COPY/ADD from the build context (None for COPY --from=stage)."""
    words = rest.split()
    if any(w.startswith("--from") for w in words):
        return None
    words = [w for w in words if not w.startswith("--")]
    if rest.lstrip().startswith("["):
        words = ast.literal_eval(rest[rest.index("[") :])
    return words[:-1]


def _pins() -> dict[str, str]:
    """name -> version for every `name==version` in pyproject.toml (dependencies and extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    pins = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==([\w.]+)(?:\s*;.*)?", req.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


class DockerIgnore:
    """The subset of .dockerignore semantics this repository uses: last match wins, `!` re-includes,
    a matched directory covers everything below it, `**/` matches at any depth."""

    def __init__(self, text: str):
        self.rules = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                negate = line.startswith("!")
                self.rules.append((negate, line.lstrip("!").strip("/")))

    def excluded(self, rel: str) -> bool:
        parts = rel.strip("/").split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, pattern in self.rules:
            for prefix in prefixes:
                if fnmatch.fnmatchcase(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], pattern[3:])
                ):
                    result = not negate
                    break
        return result


def _dockerignore() -> DockerIgnore:
    path = ROOT / ".dockerignore"
    assert path.exists(), (
        ".dockerignore is missing: the whole repository (.venv, .git) would be sent to Docker"
    )
    return DockerIgnore(path.read_text())


# --- Dockerfiles -----------------------------------------------------------------------------


def test_there_are_images_for_every_name_components_use():
    assert {p.parent.name for p in DOCKERFILES} >= set(images.IMAGE_NAMES)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    ignore = _dockerignore()
    copied = 0
    for stage in _stages(dockerfile):
        for op, rest in stage["ops"]:
            if op not in ("COPY", "ADD"):
                continue
            sources = _copy_sources(rest)
            if sources is None:
                continue
            for src in sources:
                assert not re.match(r"https?://", src), f"{dockerfile}: {op} from a URL is not reproducible"
                matches = list(ROOT.glob(src)) if any(ch in src for ch in "*?[") else [ROOT / src]
                assert matches and all(m.exists() for m in matches), (
                    f"{dockerfile}: {op} {src}: not in the repository"
                )
                assert not ignore.excluded(src), f"{dockerfile}: {op} {src}: excluded by .dockerignore"
                copied += 1
    assert copied, f"{dockerfile} copies nothing from the repository"


def test_dockerignore_keeps_secrets_and_bulk_out():
    ignore = _dockerignore()
    for path in (
        ".venv",
        ".venv/bin/python",
        ".git",
        ".git/config",
        "demo-out",
        "tests",
        "k8s",
        "medsynth/__pycache__/cli.cpython-311.pyc",
        "medsynth.egg-info",
        "key.json",
    ):
        assert ignore.excluded(path), f".dockerignore lets {path} into the build context"
    assert not ignore.excluded("medsynth/cli.py")
    assert not ignore.excluded("images/trainer/sshd_config")


# A tag for the reader, the digest for the build: a tag can be re-pushed, a digest cannot.
_PINNED = re.compile(r"[a-z0-9][a-z0-9./_-]*:(?P<tag>[\w][\w.-]*)@sha256:[0-9a-f]{64}")


def _check_pinned(image: str, where: str) -> str:
    assert "$" not in image, f"{where}: FROM {image}: unresolved build argument"
    m = _PINNED.fullmatch(image)
    assert m, f"{where}: FROM {image} is not pinned by digest (name:tag@sha256:<64 hex>)"
    assert m.group("tag") != "latest", f"{where}: FROM {image} uses latest"
    return m.group("tag")


def test_the_digest_check_rejects_tags_and_short_digests():
    digest = "@sha256:" + "a" * 64
    for bad in ("python:3.11.13-slim-bookworm", "python" + digest, "python:3.11@sha256:abc",
                "python:latest" + digest, "${PYTHON_IMAGE}"):
        with pytest.raises(AssertionError):
            _check_pinned(bad, "test")
    assert _check_pinned("nvidia/cuda:12.2.2-cudnn8-runtime-ubuntu22.04" + digest, "t").startswith("12.2")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_base_images_pinned_by_digest(dockerfile):
    stages = _stages(dockerfile)
    aliases = {s["alias"] for s in stages if s["alias"]}
    assert stages, f"{dockerfile} has no FROM"
    for stage in stages:
        if stage["image"] not in aliases:
            _check_pinned(stage["image"], str(dockerfile))


def test_make_images_builds_for_linux_amd64():
    # GKE's nodes and the lock files' platform; a build on an ARM laptop would otherwise give arm64.
    make = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^images:.*\n((?:\t.*\n)+)", make, flags=re.M).group(1)
    platform = re.search(r"^PLATFORM\s*:?=\s*(\S+)", make, flags=re.M)
    builds = [line for line in recipe.splitlines() if "docker build" in line or "docker buildx build" in line]
    assert len(builds) == len(DOCKERFILES), recipe
    for line in builds:
        arg = re.search(r"--platform[= ](\S+)", line)
        assert arg, f"make images: {line.strip()} has no --platform"
        value = platform.group(1) if arg.group(1) == "$(PLATFORM)" else arg.group(1)
        assert value == "linux/amd64", line


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_runs_as_the_non_root_uid_the_manifests_use(dockerfile):
    final = _stages(dockerfile)[-1]
    users = [rest for op, rest in final["ops"] if op == "USER"]
    assert users, f"{dockerfile}: the final stage has no USER (it would run as root)"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, (
        f"{dockerfile}: USER {users[-1]}: use a numeric non-zero uid so Kubernetes can verify runAsNonRoot"
    )
    # Pods of this image (k8s/training) run as the same uid, or files the image prepared are not theirs.
    if dockerfile.parent.name == "trainer":
        uids = set()
        for manifest in (ROOT / "k8s" / "training").rglob("*.yaml"):
            for doc in yaml.safe_load_all(manifest.read_text()):
                if doc and doc.get("kind") in ("MPIJob", "TFJob"):
                    replicas = doc["spec"].get("mpiReplicaSpecs") or doc["spec"].get("tfReplicaSpecs")
                    uids |= {r["template"]["spec"]["securityContext"]["runAsUser"] for r in replicas.values()}
        assert uids == {int(user)}


def test_python_matches_requires_python():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minor = re.search(r">=\s*3\.(\d+)", requires).group(1)
    base = _stages(ROOT / "images" / "base" / "Dockerfile")
    for stage in base:
        assert stage["image"].startswith(f"python:3.{minor}."), (
            f"base image {stage['image']} is not Python 3.{minor}"
        )
    # The trainer installs the distribution's Python and checks it at build time.
    trainer = (ROOT / "images" / "trainer" / "Dockerfile").read_text()
    assert f"python3.{minor} -m venv" in trainer
    assert f"sys.version_info[:2] == (3, {minor})" in trainer


def _lock(name: str) -> dict[str, str]:
    """name -> version of images/<name>/requirements.lock (every line `name==version`)."""
    pins = {}
    for line in (ROOT / "images" / name / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([\w.+!-]+)", line.strip())
            assert m, f"images/{name}/requirements.lock: {line!r} is not name==version"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_installs_exactly_its_lock_file(dockerfile):
    # One lock per image, installed with --no-deps (nothing else is resolved at build time) and
    # followed by `pip check`; then medsynth itself and, in the trainer, the Horovod it built, each
    # without dependencies; and nothing the tests need only (requirements-nodeps.txt, test extra).
    name = dockerfile.parent.name
    ops = [(op, rest) for stage in _stages(dockerfile) for op, rest in stage["ops"]]
    lock = f"images/{name}/requirements.lock"
    copies = [rest for op, rest in ops if op == "COPY" and lock in rest]
    assert copies, f"{dockerfile} does not copy {lock}"
    target = os.path.normpath(copies[0].split()[-1])
    runs = [rest for op, rest in ops if op == "RUN" and "pip install" in rest]
    assert runs, f"{dockerfile} installs nothing"
    first = re.search(r"pip install (.*?)(?:&&|$)", runs[0]).group(1).split()
    assert first[:2] == ["--no-deps", "-r"] and os.path.normpath(first[2]) == target, (
        f"{dockerfile}: the first install must be `pip install --no-deps -r {target}`, is {first}"
    )
    for i, rest in enumerate(runs):
        for command in re.findall(r"pip install ([^&;]*)", rest)[1 if i == 0 else 0 :]:
            words = command.split()
            assert words[0] == "--no-deps" and "-r" not in words, f"{dockerfile}: pip install {command}"
        tail = rest[rest.rindex("pip install") :]
        assert "pip check" in tail, f"{dockerfile}: no `pip check` after the last install of: {rest[:80]}"
    assert "requirements-nodeps.txt" not in dockerfile.read_text()


def test_locks_hold_every_pin_of_pyproject_and_no_test_reference():
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {re.split(r"[=<>!~ ;\[]", r)[0].lower().replace("_", "-") for r in project["dependencies"]}
    test_only = set(re.findall(r"^([A-Za-z0-9_.-]+)==", (ROOT / "requirements-nodeps.txt").read_text(), re.M))
    test_only |= {re.split(r"==", r)[0] for r in project["optional-dependencies"]["test"]}
    base, trainer = _lock("base"), _lock("trainer")
    for name, lock in (("base", base), ("trainer", trainer)):
        for dep in runtime:
            assert lock.get(dep) == pins[dep], f"images/{name}/requirements.lock: {dep} is not {pins[dep]}"
        leaked = {t.lower() for t in test_only} & set(lock)
        assert not leaked, f"images/{name}/requirements.lock carries test references {leaked}"
    # The trainer runs the same packages as the CPU steps, plus Horovod's own requirements (setup.py of
    # horovod 0.28.1: cloudpickle, psutil, pyyaml, packaging, cffi), and never Horovod from an index.
    assert {k: trainer[k] for k in base} == base
    assert {"cloudpickle", "psutil", "pyyaml", "packaging", "cffi"} <= set(trainer)
    assert "horovod" not in trainer and "horovod" not in base


def _tf_build_info() -> dict:
    """TensorFlow's build info (CUDA/cuDNN it was built against), read without importing TensorFlow."""
    import importlib.util

    spec = importlib.util.find_spec("tensorflow")
    assert spec and spec.origin, "tensorflow is not installed"
    path = Path(spec.origin).parent / "python" / "platform" / "build_info.py"
    module_spec = importlib.util.spec_from_file_location("_tf_build_info", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return dict(module.build_info)


def test_trainer_versions_agree_with_pyproject():
    dockerfile = ROOT / "images" / "trainer" / "Dockerfile"
    pins = _pins()
    build = _tf_build_info()
    assert _lock("trainer")["tensorflow"] == pins["tensorflow"]
    # The CUDA image carries the CUDA major.minor and cuDNN major that this TensorFlow was built with.
    cuda_mm = _arg_default(dockerfile, "CUDA_MAJOR_MINOR")
    assert cuda_mm == build["cuda_version"], f"TensorFlow {pins['tensorflow']} is built for {build}"
    stages = _stages(dockerfile)
    aliases = {s["alias"] for s in stages}
    for stage in stages:
        if stage["image"] not in aliases:
            tag = _check_pinned(stage["image"], str(dockerfile))
            assert stage["image"].startswith("nvidia/cuda:"), stage["image"]
            m = re.fullmatch(r"(\d+\.\d+)\.\d+-cudnn(\d+)-runtime-ubuntu\d+\.\d+", tag)
            assert m and m.groups() == (build["cuda_version"], build["cudnn_version"]), tag
    text = dockerfile.read_text()
    assert 'test "${CUDA_VERSION%.*}" = "${CUDA_MAJOR_MINOR}"' in text, "the build asserts the image's CUDA"
    assert "b['cuda_version'] == os.environ['CUDA_MAJOR_MINOR']" in text, "and TensorFlow's, once installed"
    horovod = _arg_default(dockerfile, "HOROVOD_VERSION")
    assert horovod, "the trainer Dockerfile names no Horovod version (ARG HOROVOD_VERSION=...)"
    assert "horovod" in pins, (
        f"Horovod {horovod} is built into the trainer image but not pinned in pyproject.toml: add "
        f'an extra such as horovod = ["horovod=={horovod}"]'
    )
    assert horovod == pins["horovod"]
    for flag in (
        "HOROVOD_WITH_TENSORFLOW=1",
        "HOROVOD_WITH_GLOO=1",
        "HOROVOD_GPU_OPERATIONS=NCCL",
        "HOROVOD_WITHOUT_MPI=1",
        "HOROVOD_WITHOUT_PYTORCH=1",
        "HOROVOD_WITHOUT_MXNET=1",
    ):
        assert flag in text, f"trainer Dockerfile: Horovod is not built with {flag}"
    assert "horovodrun --check-build" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_apt_installs_nothing_that_moves_cuda_or_nccl(dockerfile):
    # NCCL and CUDA come with the pinned image; a package installed beside them is tied to its
    # version (libnccl-dev to the image's libnccl2) or to the image's CUDA minor (cuda-*-12-2).
    for stage in _stages(dockerfile):
        for op, rest in stage["ops"]:
            for command in re.split(r"&&|;", rest) if op == "RUN" else []:
                if "apt-get install" not in command:
                    continue
                for word in command.split():
                    package = word.strip('"')
                    if re.match(r"libnccl|libcudnn", package):
                        assert "=" in package, f"{dockerfile}: {package} is not tied to the image's version"
                    if package.startswith("cuda-"):
                        assert re.match(r"cuda-[a-z-]+-\$\{CUDA_MAJOR_MINOR/\./-\}", package), package


def _apt_installs(stage: dict) -> list[list[str]]:
    """The package words of every `apt-get install` of a stage (options dropped)."""
    found = []
    for op, rest in stage["ops"]:
        for command in re.split(r"&&|;", rest) if op == "RUN" else []:
            if "apt-get install" in command:
                words = command.split("apt-get install", 1)[1].split()
                found.append([w.strip('"') for w in words if not w.startswith("-")])
    return found


def _sets_snapshot_sources(stage: dict) -> bool:
    archive = "snapshot.ubuntu.com/ubuntu/${UBUNTU_SNAPSHOT}"
    runs = [rest for op, rest in stage["ops"] if op == "RUN"]
    return any("/etc/apt/sources.list" in rest and archive in rest for rest in runs)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_apt_packages_are_pinned(dockerfile):
    """A rebuild installs the same packages: Ubuntu's come from one snapshot of its archive (a fixed
    timestamp, set before any install, inherited by later stages); NVIDIA's repository packages
    (cuda-*, libnccl*, libcudnn*) carry an explicit version."""
    stages = _stages(dockerfile)
    snapshot = _arg_default(dockerfile, "UBUNTU_SNAPSHOT")
    pinned: dict[str, bool] = {}
    for stage in stages:
        inherited = pinned.get(stage["image"], False)
        pinned[stage["alias"] or ""] = inherited or _sets_snapshot_sources(stage)
        installs = _apt_installs(stage)
        if installs:
            assert pinned[stage["alias"] or ""], f"{dockerfile}: apt-get install from Ubuntu's moving mirrors"
            assert snapshot and re.fullmatch(r"\d{8}T\d{6}Z", snapshot), f"UBUNTU_SNAPSHOT={snapshot!r}"
        for package in (p for words in installs for p in words):
            if re.match(r"cuda-|libnccl|libcudnn", package):
                assert re.search(r"=\S+", package), f"{dockerfile}: {package} has no version"


def test_trainer_image_holds_the_sshd_config_the_mpijob_uses():
    text = (ROOT / "images" / "trainer" / "Dockerfile").read_text()
    assert "COPY images/trainer/sshd_config /home/medsynth/.sshd_config" in text
    assert "mkdir -p /run/sshd" in text and "openssh-server" in text


def test_serving_image_matches_the_serving_api_pin():
    assert f"tensorflow/serving:{_pins()['tensorflow-serving-api']}" == images.SERVING_IMAGE


# --- components/images.py --------------------------------------------------------------------


def test_image_references_use_the_package_version(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    assert images.image("base") == f"{images.DEFAULT_REGISTRY}/base:{__version__}"
    assert images.BASE_IMAGE.endswith(f"/base:{__version__}")
    assert images.TRAINER_IMAGE.endswith(f"/trainer:{__version__}")
    assert "latest" not in images.BASE_IMAGE + images.TRAINER_IMAGE


def test_registry_from_environment():
    env = {images.REGISTRY_ENV: "europe-docker.pkg.dev/p-1/medsynth/"}
    assert images.image("trainer", env) == f"europe-docker.pkg.dev/p-1/medsynth/trainer:{__version__}"
    assert images.registry({images.REGISTRY_ENV: "localhost:5000/ms"}) == "localhost:5000/ms"


@pytest.mark.parametrize(
    "bad", ["https://gcr.io/p/medsynth", "gcr.io/p/medsynth:1.0", "GCR.io/P", "gcr.io/p x"]
)
def test_bad_registry_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="MEDSYNTH_REGISTRY"):
        images.registry({images.REGISTRY_ENV: bad})


def test_unknown_image_name_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown image"):
        images.image("serving")


def _component_images() -> dict[str, set[str]]:
    """components/<step>.py -> the names passed as base_image= (AST, not regex)."""
    out = {}
    for path in sorted((ROOT / "components").glob("*.py")):
        if path.name in ("__init__.py", "images.py"):
            continue
        used = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "base_image":
                used.add(ast.unparse(node.value))
        out[path.stem] = used
    return out


def test_every_component_runs_on_a_medsynth_image():
    found = _component_images()
    assert found, "no components found"
    for step, used in found.items():
        assert used, f"components/{step}.py sets no base_image"
        assert used <= {"BASE_IMAGE", "TRAINER_IMAGE"}, (
            f"components/{step}.py uses {used}, not components.images"
        )
        source = (ROOT / "components" / f"{step}.py").read_text()
        assert "from components.images import" in source
    # The GPU step runs on the trainer image, the CPU steps on the base image.
    if "train" in found:
        assert found["train"] == {"TRAINER_IMAGE"}
    for step in ("prepare", "evaluate", "compare", "export", "push"):
        if step in found:
            assert found[step] == {"BASE_IMAGE"}, step


# --- the locks, installed -------------------------------------------------------------------------

# What the trainer image holds besides the lock: the project itself (COPY lines of the Dockerfiles).
_PROJECT = ("pyproject.toml", "README.md", "medsynth", "components", "pipelines")

_CLOSED = """
import re, sys
from importlib import metadata
from packaging.requirements import Requirement
lock = dict(l.split("==") for l in open(sys.argv[1]).read().split() if "==" in l)
names = {re.sub(r"[-_.]+", "-", n).lower() for n in lock}
missing = []
for name in names:
    for text in metadata.distribution(name).requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        dep = re.sub(r"[-_.]+", "-", req.name).lower()
        if dep not in names or not req.specifier.contains(metadata.version(dep), prereleases=True):
            missing.append(f"{name} needs {text}")
print("\\n".join(missing))
sys.exit(1 if missing else 0)
"""


@pytest.mark.slow
def test_the_locks_install_into_a_fresh_venv_and_pass_pip_check(tmp_path):
    """What the Dockerfiles run, in an empty virtualenv on this (linux/amd64, Python 3.11) machine: the
    trainer's lock with --no-deps, `pip check`, medsynth with --no-deps, `pip check`, then the CLI
    and a pipeline compile with nothing but locked packages. The base lock is the trainer's minus
    Horovod's requirements; that it is closed too is checked against the installed metadata."""
    import shutil
    import subprocess
    import sys

    def run(*argv: str | Path) -> str:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=1500,
                              cwd=tmp_path, env={**os.environ, "PYTHONNOUSERSITE": "1"})
        command = " ".join(map(str, argv))
        assert proc.returncode == 0, f"{command}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    lock = ROOT / "images" / "trainer" / "requirements.lock"
    run(py, "-m", "pip", "install", "--quiet", "--no-deps", "-r", lock)
    run(py, "-m", "pip", "check")
    src = tmp_path / "src"
    src.mkdir()
    for name in _PROJECT:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    run(py, "-m", "pip", "install", "--quiet", "--no-deps", src)
    run(py, "-m", "pip", "check")
    closed = tmp_path / "closed.py"
    closed.write_text(_CLOSED)
    run(py, closed, ROOT / "images" / "base" / "requirements.lock")
    assert "compile" in run(venv / "bin" / "medsynth", "--help")
    run(venv / "bin" / "medsynth", "compile", "--backbones", "mobilenetv2", "--out", tmp_path / "p.yaml")
    assert "medsynth-train" in (tmp_path / "p.yaml").read_text()
