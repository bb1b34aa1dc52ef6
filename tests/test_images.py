"""images/: the Dockerfiles, read statically (no Docker engine here), and components/images.py.

Every COPY source exists and survives .dockerignore, base images are pinned by tag, the images run as
a non-root uid that the manifests also use, the TensorFlow/Horovod/TF Serving versions agree with the
pins in pyproject.toml, and every KFP component names one of these images.
"""

from __future__ import annotations

import ast
import fnmatch
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


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_base_images_pinned_by_tag(dockerfile):
    stages = _stages(dockerfile)
    aliases = {s["alias"] for s in stages if s["alias"]}
    assert stages, f"{dockerfile} has no FROM"
    for stage in stages:
        image = stage["image"]
        if image in aliases:
            continue
        assert "$" not in image, f"{dockerfile}: FROM {image}: unresolved build argument"
        name, _, tag = image.rpartition(":")
        assert name and "/" not in tag and tag, f"{dockerfile}: FROM {image} is not pinned by tag"
        assert tag != "latest", f"{dockerfile}: FROM {image} uses latest"


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
    # The TF image brings its own Python; the trainer checks it at build time.
    trainer = (ROOT / "images" / "trainer" / "Dockerfile").read_text()
    assert f"sys.version_info[:2] == (3, {minor})" in trainer


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_installs_exactly_the_pyproject_pins(dockerfile):
    # Dependencies come from pyproject.toml's own list (not a copy that could drift), then the package
    # itself with --no-deps, then requirements-nodeps.txt as `make venv` does.
    ops = [(op, rest) for stage in _stages(dockerfile) for op, rest in stage["ops"]]
    runs = " ".join(rest for op, rest in ops if op == "RUN")
    copies = " ".join(rest for op, rest in ops if op == "COPY")
    assert "pyproject.toml" in copies and "['project']['dependencies']" in runs
    assert re.search(r"pip install --no-deps (\.|/src)(\s|$)", runs), (
        "the package itself must not change the pins"
    )
    assert "requirements-nodeps.txt" in copies and re.search(r"--no-deps -r \S*requirements-nodeps.txt", runs)
    assert not re.search(r"pip install[^&]*\btensorflow==", runs), "TensorFlow must come from pyproject.toml"


def test_trainer_versions_agree_with_pyproject():
    dockerfile = ROOT / "images" / "trainer" / "Dockerfile"
    pins = _pins()
    tf = pins["tensorflow"]
    for stage in _stages(dockerfile):
        name, _, tag = stage["image"].rpartition(":")
        assert name == "tensorflow/tensorflow", stage["image"]
        # The official image of the same minor line (Docker Hub has 2.15.0-gpu, no 2.15.1); the pin
        # installed on top then sets the exact version.
        assert tag.endswith("-gpu") and tag.split(".")[:2] == tf.split(".")[:2], (
            f"trainer base {stage['image']} is not the TensorFlow {tf} GPU line"
        )
    horovod = _arg_default(dockerfile, "HOROVOD_VERSION")
    assert horovod, "the trainer Dockerfile names no Horovod version (ARG HOROVOD_VERSION=...)"
    assert "horovod" in pins, (
        f"Horovod {horovod} is built into the trainer image but not pinned in pyproject.toml: add "
        f'an extra such as horovod = ["horovod=={horovod}"]'
    )
    assert horovod == pins["horovod"]
    text = dockerfile.read_text()
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
