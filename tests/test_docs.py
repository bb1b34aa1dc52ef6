"""The README as a landing page whose links all lead somewhere, and docs/cluster.md, followed top to
bottom as a platform engineer would paste it.

The guide's shell blocks are read in order with the environment they build up (every `export`, every
assignment): each variable a command uses must be set before it, each value the user chooses is set
once at the top and never written literally, each name the guide exports is used by a later
command or read by medsynth, and each `medsynth ...` line parses with the real CLI parser under that
environment. `compile` lines are run (in a subprocess, with the guide's MEDSYNTH_REGISTRY), and the
`submit`/`schedule` lines are checked against the package they send: parameter names and types, no
placeholder default left, the workers x GPUs split of the batch. Nothing reaches a network.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from medsynth.cli import COMMANDS, build_parser
from medsynth.cluster import check_ranks
from medsynth.errors import ConfigError
from medsynth.kfp_client import coerce_params, load_package, parse_param_args, pipeline_parameters

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "cluster.md"
README = ROOT / "README.md"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_FOR = re.compile(r"^for\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b")
AMBIENT = {"HOME": "/home/engineer"}  # what a shell has before the guide sets anything


@dataclass
class Line:
    """One command of the guide (continuations joined), with the environment set before it."""

    text: str
    env: dict[str, str]
    block: int
    heredoc: list[str] = field(default_factory=list)


def _blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def _strip_comment(line: str) -> str:
    """The command without a trailing `# comment` (outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if ch in "'\"" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _plain_value(value: str) -> bool:
    """`NAME=value` alone (an assignment), not `NAME=value command` (an environment for one command)."""
    value = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)|'[^']*'|\"[^\"]*\"", "x", value.strip())
    return not re.search(r"\s", value)


def _expand(text: str, env: dict[str, str]) -> str:
    text = re.sub(r"\$\((?:[^()]|\([^()]*\))*\)", "cmd-output", text)  # $(command) substitutions
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), m.group(0)), text)


def guide_lines(text: str | None = None) -> list[Line]:
    env = dict(AMBIENT)
    lines: list[Line] = []
    for b, block in enumerate(_blocks(GUIDE.read_text() if text is None else text)):
        raw = block.splitlines()
        i = 0
        while i < len(raw):
            line = raw[i]
            while line.endswith("\\") and i + 1 < len(raw):
                i += 1
                line = line[:-1] + " " + raw[i].strip()
            i += 1
            command = _strip_comment(line.strip())
            if not command:
                continue
            entry = Line(command, dict(env), b)
            end = re.search(r"<<-?\s*'?(\w+)'?", command)
            if end:  # a here-document: its lines belong to this command
                while i < len(raw) and raw[i].strip() != end.group(1):
                    entry.heredoc.append(raw[i])
                    i += 1
                i += 1
            lines.append(entry)
            m = _ASSIGN.match(command)
            if m and _plain_value(m.group(2)):
                env[m.group(1)] = _expand(m.group(2).strip().strip("'\""), env)
            loop = _FOR.match(command)
            if loop:
                env[loop.group(1)] = "loop-value"
    return lines


def _used(line: Line) -> set[str]:
    return {a or b for a, b in _VAR.findall(" ".join([line.text, *line.heredoc]))}


def _medsynth_argv(line: Line) -> list[str] | None:
    """`[.venv/bin/]medsynth ARGS` (possibly after VAR=value prefixes), expanded; None otherwise."""
    words = shlex.split(_expand(line.text, line.env))
    while words and _ASSIGN.match(words[0]):
        words = words[1:]
    if words and words[0] in ("medsynth", ".venv/bin/medsynth"):
        return words[1:]
    return None


# --- the README and the pages it links ------------------------------------------------------------
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(text: str, base: Path) -> list[str]:
    """The relative links and pictures of a Markdown page (in `base`) that point at nothing."""
    targets = [t for t in _LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    return [t for t in targets if not (base / t.split("#")[0]).exists()]


def test_every_relative_link_and_picture_of_the_docs_resolves():
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) >= 9
    for page in pages:
        assert broken_links(page.read_text(), page.parent) == [], page.relative_to(ROOT)
    assert broken_links("[x](docs/nowhere.md) ![y](img/none.png) [z](https://e.org/a) [w](#top)", ROOT) == [
        "docs/nowhere.md", "img/none.png"]


def test_the_readme_is_a_landing_page_that_links_every_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 160, "the README is a landing page: move the detail to docs/"
    for needed in ("make demo", "make test", "](docs/cluster.md)"):
        assert needed in text, needed
    pictures = re.findall(r"!\[([^\]]*)\]\((docs/img/[^)]+\.png)\)", text)  # real beside synthetic frames
    assert {"real frames", "synthetic frames"} <= {alt for alt, _ in pictures}, pictures
    assert all((ROOT / path).is_file() for _, path in pictures), pictures
    linked = {Path(t).name for t in _LINK.findall(text)}
    unlinked = sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name not in linked)
    assert not unlinked, f"docs/ pages the README does not link: {unlinked}"


# --- the environment ------------------------------------------------------------------------------


def test_every_variable_is_set_before_a_command_uses_it():
    lines = guide_lines()
    assert lines, "docs/cluster.md has no shell blocks"
    for line in lines:
        unset = _used(line) - set(line.env)
        assert not unset, f"docs/cluster.md: `{line.text}` uses {sorted(unset)} before they are set"


def _chosen() -> list[str]:
    """The values the user chooses: the table of §0."""
    section = GUIDE.read_text().split("## 1.")[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.M)


def test_every_chosen_value_is_set_once_at_the_top_and_never_written_literally():
    chosen = _chosen()
    assert {"PROJECT_ID", "BUCKET", "REGION", "LOCATION", "GPU_TYPE", "RUN_NAMESPACE"} <= set(chosen)
    lines = guide_lines()
    for name in chosen:
        sets = [ln for ln in lines if (m := _ASSIGN.match(ln.text)) and m.group(1) == name]
        assert len(sets) == 1 and sets[0].block == 0, f"{name} must be set once, in the first block"
    for line in lines:
        text = " ".join([line.text, *line.heredoc])
        literal = re.search(r"YOUR_|gs://[A-Z_]+\b|<[a-z-]+>", text)
        assert not literal, f"a placeholder written literally: {text}"
        bare = _VAR.sub("", re.sub(r"\b[A-Z_]+=", "", text))
        for name in chosen:
            assert not re.search(rf"\b{name}\b", bare), f"`{line.text}` writes {name} instead of ${{{name}}}"


def _read_by_medsynth(name: str) -> bool:
    sources = [*ROOT.joinpath("medsynth").rglob("*.py"), *ROOT.joinpath("components").glob("*.py")]
    return any(f'"{name}"' in p.read_text() for p in sources)


def test_every_name_the_guide_sets_is_used_by_a_command_or_read_by_medsynth():
    lines = guide_lines()
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line.text)
        if not m:
            continue
        name = m.group(1)
        later = any(name in _used(other) for other in lines[i + 1 :])
        assert later or _read_by_medsynth(name), (
            f"docs/cluster.md sets {name}, which no later command uses and medsynth does not read"
        )
    # The names medsynth reads, as the guide sets them: a typo (KFP_HOST) would fail the line above.
    read = ("MEDSYNTH_REGISTRY", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_NAMESPACE", "KF_PIPELINES_TOKEN_FILE")
    for name in read:
        assert _read_by_medsynth(name), name
        assert any(_ASSIGN.match(ln.text) and ln.text.split("=")[0].split()[-1] == name for ln in lines), name


def test_the_environment_check_catches_the_old_mistakes():
    # A name exported but read by nothing, and a value written literally.
    old = "```sh\nexport KFP_HOST=http://localhost:8080\n```\n"
    (line,) = guide_lines(old)
    assert not _read_by_medsynth("KFP_HOST") and _ASSIGN.match(line.text)
    (line,) = guide_lines("```sh\nmedsynth submit --pipeline-root gs://BUCKET/pipeline-root\n```\n")
    assert re.search(r"gs://[A-Z_]+\b", line.text)


# --- the medsynth commands ----------------------------------------------------------------------


def _parse(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    for var in [v for v in os.environ if v.startswith(("KF_PIPELINES_", "MEDSYNTH_"))]:
        monkeypatch.delenv(var)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    try:
        return build_parser().parse_args(argv)  # defaults such as --host come from the environment
    except SystemExit as e:
        pytest.fail(f"docs/cluster.md: `medsynth {' '.join(argv)}` does not parse (exit {e.code})")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict[str, Path]:
    """Every `medsynth compile` of the guide, run with the guide's environment: --out -> the package."""
    out: dict[str, Path] = {}
    tmp = tmp_path_factory.mktemp("guide")
    for line in guide_lines():
        argv = _medsynth_argv(line)
        if not argv or argv[0] != "compile":
            continue
        flags = argv[1:]
        target = flags[flags.index("--out") + 1]
        flags[flags.index("--out") + 1] = str(tmp / Path(target).name)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KF_PIPELINES_", "MEDSYNTH_"))}
        proc = subprocess.run([sys.executable, "-m", "medsynth.cli", "compile", *flags], cwd=ROOT,
                              env={**env, **line.env, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"`medsynth {' '.join(argv)}` failed:\n{proc.stderr[-2000:]}"
        out[target] = tmp / Path(target).name
        # the package names the images of the registry the guide set (§0), not the placeholder
        spec = next(yaml.safe_load_all(out[target].read_text()))
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert all(i.startswith(line.env["MEDSYNTH_REGISTRY"] + "/") for i in images), images
    assert out, "docs/cluster.md compiles no pipeline"
    return out


def test_every_medsynth_command_parses_with_the_guides_environment(monkeypatch):
    commands = [(line, argv) for line in guide_lines() if (argv := _medsynth_argv(line)) is not None]
    assert {argv[0] for _, argv in commands} >= {"compile", "submit", "schedule", "runs", "generate"}
    for line, argv in commands:
        assert argv[0] in COMMANDS, f"`medsynth {argv[0]}` is not a medsynth command"
        args = _parse(argv, line.env, monkeypatch)
        if argv[0] in ("submit", "schedule", "runs"):
            assert args.host, f"`medsynth {' '.join(argv)}`: no --host and KF_PIPELINES_ENDPOINT is not set"
            if line.env.get("KF_PIPELINES_TOKEN_FILE"):  # multi-user: identity and profile with it
                assert args.token_file and args.namespace == line.env["RUN_NAMESPACE"], argv


def test_runs_are_submitted_as_the_guide_sets_them_up(compiled, monkeypatch):
    creating = []
    for line in guide_lines():
        argv = _medsynth_argv(line)
        if argv and (argv[0] == "submit" or (argv[0] == "schedule" and "--cron" in argv)):
            creating.append((argv, _parse(argv, line.env, monkeypatch)))
    assert len(creating) >= 3
    for argv, args in creating:
        what = f"`medsynth {' '.join(argv)}`"
        # the account with the Workload Identity binding and the runner RBAC (k8s/pipeline-runner)
        assert args.service_account == "medsynth-pipeline", what
        assert args.pipeline_root and args.pipeline_root.startswith("gs://"), what
        assert args.package in compiled, f"{what}: sends a package the guide did not compile"
        spec = load_package(compiled[args.package])
        specs = pipeline_parameters(spec)
        try:
            values = coerce_params(parse_param_args(args.param), specs)
        except ConfigError as e:
            pytest.fail(f"{what}: {e}")
        for name, p in specs.items():  # a default that names no real bucket must be overridden
            assert name in values or "YOUR_" not in str(p.default), f"{what}: --param {name} is missing"
        tasks = {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}
        if tasks["train-final"]["componentRef"]["name"] == "comp-launch-training-job":
            size = {k: values.get(k, specs[k].default) for k in ("batch_size", "workers", "gpus")}
            batch, workers, gpus = size["batch_size"], size["workers"], size["gpus"]
            try:
                check_ranks(batch, workers, gpus)
            except ConfigError as e:
                pytest.fail(f"{what}: {e}")


def test_multi_user_identity_is_a_pipelines_token_in_the_file_the_cli_reads():
    lines = guide_lines()
    tokens = [ln for ln in lines if "create token" in ln.text]
    assert tokens, "the guide never says how to get a KFP token"
    for line in tokens:
        assert "--audience=pipelines.kubeflow.org" in line.text, line.text
        target = line.text.split(">")[-1]
        assert "${KF_PIPELINES_TOKEN_FILE}" in target, "the token goes to the file the CLI reads"
    # against the API server itself (a port-forward), which takes the token
    assert any("port-forward svc/ml-pipeline 8888:8888" in ln.text for ln in lines)
    assert any(ln.text.startswith("export KF_PIPELINES_ENDPOINT=http://localhost:8888") for ln in lines)


# --- the manifests and operators the guide applies ------------------------------------------------


def test_the_guide_applies_kustomizations_that_exist():
    used = set()
    for line in guide_lines():
        if "kubectl" in line.text and (" -k " in line.text or "kustomize " in line.text):
            used.update(re.findall(r"(k8s/[\w/.-]*\w)", line.text))
    assert {
        "k8s/overlays/gcp",
        "k8s/overlays/gcp/multi-user",
        "k8s/overlays/gcp/standalone",
        "k8s/overlays/gcp/horovod",
        "k8s/overlays/gcp/multiworker",
        "k8s/operators/training-operator",
    } <= used
    for path in used:
        assert (ROOT / path / "kustomization.yaml").exists(), f"docs/cluster.md: {path} is no kustomization"
    # the settings file the guide writes has exactly the keys the gcp overlay replaces
    (settings,) = [ln for ln in guide_lines() if "settings/settings.env" in ln.text and ln.heredoc]
    keys = [h.split("=")[0] for h in settings.heredoc]
    shipped = (ROOT / "k8s" / "overlays" / "gcp" / "settings" / "settings.env").read_text().split()
    assert keys == [k.split("=")[0] for k in shipped]
