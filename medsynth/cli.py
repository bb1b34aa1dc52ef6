"""`medsynth …`: a thin command line over the library.

Each command parses flags, builds the step's config and calls one library
function. Any `MedsynthError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medsynth import __version__
from medsynth.cli_help import Parser
from medsynth.cpu import choose_onednn
from medsynth.errors import ConfigError, MedsynthError
from medsynth.train.config import TrainConfig
from medsynth.utility.arms import ARMS
from medsynth.utility.experiment import UtilityConfig

T = TypeVar("T")
Handler = Callable[[argparse.Namespace], int | None]
COMMANDS: dict[str, Handler] = {}


def _from_args(cls: type[T], args: argparse.Namespace, **others: Any) -> T:
    """A command's config dataclass from the flags named like its fields (`others`: the rest)."""
    names = {f.name for f in dataclasses.fields(cls)} - set(others)
    return cls(**{k: v for k, v in vars(args).items() if k in names}, **others)


def _command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


# --- demo ---------------------------------------------------------------------------------------
@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from medsynth.demo import DemoConfig, DemoFailed, run_demo

    cfg = DemoConfig(
        pipeline_root=args.pipeline_root,
        image_size=args.image_size,
        steps=args.steps,
        minutes=args.minutes,
        compare_steps=args.compare_steps,
        backbones=_csv(args.backbones),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    try:
        print(run_demo(cfg))
    except DemoFailed as e:  # its task's last lines and log are on the terminal already
        print(f"medsynth demo: {e}", file=sys.stderr)
        return 1
    return 0


# --- phantom ------------------------------------------------------------------------------------
@_command("phantom")
def _phantom(args: argparse.Namespace) -> int:
    from medsynth.data.phantom import write_phantom

    out = write_phantom(args.out, n=args.n, size=args.size, seed=args.seed, fmt=args.format)
    print(f"wrote {args.n} phantom frames to {out}")
    return 0


# --- summary ------------------------------------------------------------------------------------
@_command("summary")
def _summary(args: argparse.Namespace) -> int:
    from medsynth.models.summary import summary_table

    print(
        summary_table(
            image_size=args.image_size,
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            backbone_mode=args.backbone_mode,
            head=args.d_head,
        )
    )
    return 0


# --- prepare ------------------------------------------------------------------------------------
@_command("prepare")
def _prepare(args: argparse.Namespace) -> int:
    from medsynth.data.prepare import PrepareConfig, prepare

    cfg = _from_args(PrepareConfig, args)
    result = prepare(cfg)
    print(f"dataset ready: {result}")
    return 0


# --- train --------------------------------------------------------------------------------------
@_command("train")
def _train(args: argparse.Namespace) -> int:
    from medsynth.train.loop import train

    cfg = TrainConfig.from_flags(args)
    result = train(cfg)
    print(f"training done: {result.uri or result.run_dir} (step {result.step})")
    return 0


# --- evaluate -----------------------------------------------------------------------------------
@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run

    cfg = _from_args(EvaluateConfig, args, pretrained=args.pretrained_metrics)
    metrics = evaluate_run(cfg)
    for k, v in sorted(metrics.items()):
        print(f"{k}: {v}")
    return 0


# --- tracker ------------------------------------------------------------------------------------
@_command("tracker")
def _tracker(args: argparse.Namespace) -> int:
    from medsynth.tracker.frames import dataset_frames, run_frames

    if args.tracker_command == "train":
        from medsynth.tracker.config import TrackerConfig
        from medsynth.tracker.train import train_tracker

        cfg = TrackerConfig.from_flags(args)
        frames = run_frames(args.data, args.synthetic, args.n_real, args.seed)
        metrics = train_tracker(cfg, frames.real, frames.synthetic, frames.val, frames.source)
        print(f"tracker trained: {cfg.out} (step {cfg.steps})")
    else:
        from medsynth.tracker.evaluate import evaluate_tracker

        frames = dataset_frames(args.data, args.split, args.n, args.seed)
        metrics = evaluate_tracker(args.run, frames, args.threshold, args.tolerance)
    for k, v in sorted(metrics.items()):
        print(f"{k}: {v}")
    return 0


# --- export -------------------------------------------------------------------------------------
@_command("export")
def _export(args: argparse.Namespace) -> int:
    from medsynth.serving.export import ExportConfig, export_run

    cfg = _from_args(ExportConfig, args)
    path = export_run(cfg)
    print(f"exported SavedModel: {path}")
    return 0


# --- push ---------------------------------------------------------------------------------------
@_command("push")
def _push(args: argparse.Namespace) -> int:
    from medsynth.serving.push import PushConfig, push

    cfg = _from_args(PushConfig, args)
    decision = push(cfg)
    print(decision.summary())
    return 0 if decision.pushed else 1


# --- compile ------------------------------------------------------------------------------------
@_command("compile")
def _compile(args: argparse.Namespace) -> int:
    from medsynth.cluster import Placement
    from pipelines.medsynth_train import compile_pipeline

    placement = Placement(gpu_type=args.gpu_type, spot=args.spot, credentials_secret=args.credentials_secret,
                          multi_node=args.multi_node)
    path = compile_pipeline(args.out, backbones=_csv(args.backbones), placement=placement)
    print(f"compiled pipeline: {path}")
    return 0


# --- submit / schedule / runs (Kubeflow Pipelines) ----------------------------------------------
@contextlib.contextmanager
def _pipeline_package(args: argparse.Namespace) -> Iterator[str]:
    """`--package`, or medsynth-train compiled from this code (with `--backbones`) into a temp file."""
    if args.package is not None:
        if args.backbones:
            raise ConfigError("--backbones applies when compiling; with --package the backbones are fixed")
        yield args.package
        return
    print("compiling medsynth-train from this code …", file=sys.stderr, flush=True)
    from pipelines.medsynth_train import compile_pipeline

    with tempfile.TemporaryDirectory(prefix="medsynth-kfp-") as tmp:
        yield str(compile_pipeline(Path(tmp) / "pipeline.yaml", backbones=_csv(args.backbones)))


def _kfp_client(args: argparse.Namespace):  # -> medsynth.kfp_client.PipelineClient
    from medsynth.kfp_client import TOKEN_ENV, PipelineClient

    if not args.host:
        raise ConfigError("--host is required (or set KF_PIPELINES_ENDPOINT), e.g. "
                          "https://kubeflow.example.com/pipeline or http://localhost:8888")
    return PipelineClient(
        args.host,
        namespace=args.namespace,
        token=None if (args.token_file or args.in_cluster) else os.environ.get(TOKEN_ENV) or None,
        token_file=args.token_file,
        in_cluster=args.in_cluster,
        timeout=args.api_timeout,
    )


@_command("submit")
def _submit(args: argparse.Namespace) -> int:
    from medsynth.kfp_client import check_pipeline_root, parse_param_args

    params = parse_param_args(args.param)  # bad --param fails before anything is compiled or sent
    check_pipeline_root(args.pipeline_root)
    client = _kfp_client(args)
    with _pipeline_package(args) as package:
        run = client.submit(
            params,
            experiment=args.experiment,
            run_name=args.run_name,
            pipeline_root=args.pipeline_root,
            package=package,
            service_account=args.service_account,
            enable_caching=False if args.no_cache else None,
        )
    print(f"run {run.run_id} ({run.name}) created: {run.url}")
    if not args.wait:
        return 0
    final = client.wait(run.run_id, timeout=args.timeout, poll=args.poll)
    if final.succeeded:
        print(f"run {final.run_id} SUCCEEDED")
        return 0
    why = f": {final.error}" if final.error else ""
    print(f"medsynth submit: run {final.run_id} {final.state}{why} ({final.url})", file=sys.stderr)
    return 1


@_command("schedule")
def _schedule(args: argparse.Namespace) -> int:
    from medsynth.kfp_client import check_pipeline_root, parse_param_args, schedules_table

    params = parse_param_args(args.param)
    check_pipeline_root(args.pipeline_root)
    if args.cron is not None:
        from medsynth.kfp_client import to_kfp_cron

        to_kfp_cron(args.cron)  # a bad cron fails before anything is compiled or sent
    else:
        job_flags = [f for f, v in [("--param", args.param), ("--pipeline-root", args.pipeline_root),
                                    ("--package", args.package), ("--backbones", args.backbones),
                                    ("--service-account", args.service_account),
                                    ("--no-cache", args.no_cache)] if v]
        if job_flags:
            raise ConfigError(f"{', '.join(job_flags)} only apply when creating a schedule with --cron")
    client = _kfp_client(args)
    if args.list:
        print(schedules_table(client.list_schedules(experiment=args.experiment)))
        return 0
    if args.enable or args.disable:
        s = client.set_schedule_enabled(args.enable or args.disable, enabled=bool(args.enable))
        print(f"recurring run {s.recurring_run_id} ({s.name}) {'enabled' if s.enabled else 'disabled'}")
        return 0
    if args.delete:
        s = client.delete_schedule(args.delete)
        print(f"recurring run {s.recurring_run_id} ({s.name}) deleted")
        return 0
    with _pipeline_package(args) as package:
        s = client.schedule(
            args.cron,
            params,
            name=args.name,
            experiment=args.experiment or "medsynth",
            pipeline_root=args.pipeline_root,
            package=package,
            service_account=args.service_account,
            max_concurrency=args.max_concurrency,
            catchup=args.catchup,
            enabled=not args.paused,
            enable_caching=False if args.no_cache else None,
        )
    state = "enabled" if s.enabled else "disabled"
    print(f"recurring run {s.recurring_run_id} ({s.name}) created, {state}, KFP cron {s.cron!r}: {s.url}")
    return 0


@_command("runs")
def _runs(args: argparse.Namespace) -> int:
    from medsynth.kfp_client import runs_table

    print(runs_table(_kfp_client(args).list_runs(experiment=args.experiment, n=args.n)))
    return 0


def _kfp_parser_args(s: argparse.ArgumentParser, job: bool) -> None:
    """Connection flags for every KFP command; `job`: the flags that define what runs."""
    from medsynth.kfp_client import ENDPOINT_ENV, NAMESPACE_ENV, TOKEN_FILE_ENV

    s.add_argument("--host", default=os.environ.get(ENDPOINT_ENV) or None,
                   help="KFP API URL, e.g. https://HOST/pipeline or http://localhost:8888 (a port-forward to "
                        f"ml-pipeline) (default: ${ENDPOINT_ENV})")
    s.add_argument("--namespace", default=os.environ.get(NAMESPACE_ENV) or None,
                   help=f"profile namespace, multi-user Kubeflow only (default: ${NAMESPACE_ENV})")
    s.add_argument("--token-file", default=os.environ.get(TOKEN_FILE_ENV) or None,
                   help="file holding a bearer token, re-read per request, e.g. from `kubectl create token "
                        f"... --audience=pipelines.kubeflow.org` (default: ${TOKEN_FILE_ENV}); or put the "
                        "token itself in $KF_PIPELINES_TOKEN (never on the command line; never printed)")
    s.add_argument("--in-cluster", action="store_true",
                   help="authenticate with the pod's KFP service-account token "
                        "($KF_PIPELINES_SA_TOKEN_PATH or /var/run/secrets/kubeflow/pipelines/token)")
    s.add_argument("--api-timeout", type=float, default=30.0, help="seconds per API request")
    if job:
        s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                       help="pipeline parameter, typed by the pipeline (repeat); e.g. --param image_size=128")
        s.add_argument("--pipeline-root", default=None, help="where KFP keeps artifacts, e.g. gs://BUCKET/root")
        s.add_argument("--package", default=None,
                       help="compiled pipeline YAML to send (default: compile medsynth-train from this code)")
        s.add_argument("--backbones", default=None,
                       help="comma-separated candidates, when compiling (default: the 8 of Table 2)")
        s.add_argument("--service-account", default=None, help="Kubernetes service account the run uses")
        s.add_argument("--no-cache", action="store_true",
                       help="run every task even if KFP has a cached result for the same inputs")


# --- serve --------------------------------------------------------------------------------------
@_command("serve")
def _serve(args: argparse.Namespace) -> int:
    import logging

    from medsynth.serving.server import ServeConfig, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = ServeConfig(
        model_base_path=args.model_base_path,
        model_name=args.model_name,
        rest_port=None if args.rest_port < 0 else args.rest_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        host=args.host,
        file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
        max_images_per_request=args.max_images_per_request,
        max_request_bytes=args.max_request_bytes,
    )
    return run_server(cfg)


# --- generate -----------------------------------------------------------------------------------
@_command("generate")
def _generate(args: argparse.Namespace) -> int:
    from medsynth.serving.client import Client, read_layouts, write_images, write_labelled

    if args.n is not None and args.n < 1:
        raise ConfigError(f"-n {args.n}: ask for at least one image")
    with Client(
        endpoint=args.endpoint,
        grpc=args.grpc,
        model=args.model,
        timeout=args.timeout,
        retries=args.retries,
        max_per_request=args.max_per_request,
    ) as client:
        if args.keypoints is None:
            images = client.generate(args.n or 16, seed=args.seed, version=args.version, progress=True)
        else:
            version = client.served_version() if args.version is None else args.version
            layouts = read_layouts(args.keypoints, client.image_size(version))[: args.n]
            images = client.generate_for_keypoints(layouts, seed=args.seed, version=version, progress=True)
    if args.keypoints is None:
        paths = write_images(images, args.out, fmt=args.format)
        labels = ""
    else:
        paths, coco = write_labelled(images, args.out, fmt=args.format)
        labels = f", their key points in {coco.name}"
    first = images[0]
    print(f"wrote {len(paths)} synthetic {args.format.upper()} images to {args.out} "
          f"(model {first.model} version {first.version}, seed {first.seed}{labels})")
    return 0


# --- utility ------------------------------------------------------------------------------------
@_command("utility")
def _utility(args: argparse.Namespace) -> int:
    from medsynth.utility import UtilityConfig, run_utility

    ints = {k: tuple(_ints(getattr(args, k), k)) for k in ("n_real", "seeds")}
    summary = run_utility(_from_args(UtilityConfig, args, arms=tuple(_csv(args.arms)), **ints))
    print((Path(args.out) / "utility.md").read_text(), end="")
    print(f"results in {args.out} (results.json, utility.md, utility.png, synthetic.png)")
    return 0 if summary["verdict"]["not_worse"] or not args.fail_if_worse else 1


def _ints(value: str, name: str) -> list[int]:
    try:
        return [int(v) for v in _csv(value) or []]
    except ValueError:
        flag = "--" + name.replace("_", "-")
        raise ConfigError(f"{flag} takes comma-separated integers, got {value!r}") from None


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"empty list: {value!r}")
    return items


def _tracker_parser(sub: Any) -> None:
    from medsynth.tracker.config import TrackerConfig  # no TensorFlow: the parser stays quick

    s = sub.add_parser("tracker", help="the key-point tracker: find the catheter tip and vessel bifurcations")
    actions = s.add_subparsers(dest="tracker_command", metavar="ACTION", required=True)
    t = actions.add_parser("train", help="train on a data set's labelled train frames (and synthetic ones); "
                                         "again with the same --out to resume")
    t.add_argument("--data", required=True, help="prepared data set directory (medsynth prepare)")
    t.add_argument("--synthetic", default=None, metavar="FOLDER",
                   help="labelled synthetic frames and their COCO file (medsynth generate --keypoints)")
    t.add_argument("--n-real", type=int, default=None, metavar="N",
                   help="learn from a seeded sample of N labelled train frames (default: all)")
    TrackerConfig.add_arguments(t)  # one flag per TrackerConfig field, with its help
    e = actions.add_parser("evaluate", help="tip error, PCK and bifurcation P/R/F1 of a run on labelled data")
    e.add_argument("--run", required=True, help="the --out of `medsynth tracker train`")
    e.add_argument("--data", required=True, help="prepared data set directory")
    e.add_argument("--split", default="val", choices=("train", "val"))
    e.add_argument("-n", type=int, default=None, help="a seeded sample of N frames (default: all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threshold", type=float, default=None, help="bifurcation threshold (default: the run's)")
    e.add_argument("--tolerance", type=float, default=None,
                   help="bifurcation match distance, a fraction of the side (default: the run's)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="medsynth", description=__doc__.splitlines()[0])  # every --help ends with an example
    p.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="run the whole pipeline locally with kfp.local on phantom data")
    s.add_argument("--pipeline-root", default="demo-out", help="where every artifact goes")
    s.add_argument("--image-size", type=int, default=64, help="frame side (32, 64 or 128)")
    s.add_argument("--steps", type=int, default=None, help="steps of the final training")
    s.add_argument("--minutes", type=float, default=None,
                   help="the demo's wall-clock budget (default 15; 0: none): on a slower CPU the final "
                        "training stops early, at the step reached with a checkpoint, to end within it")
    s.add_argument("--compare-steps", type=int, default=None, help="steps per candidate in the comparison")
    s.add_argument("--backbones", default=None, help="comma-separated candidates: backbones or "
                   "configurations (paper-lite0, pg-lite0, ...; default: the paper's, our best)")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("phantom", help="write procedurally generated angiography frames with key points")
    s.add_argument("--out", required=True)
    s.add_argument("-n", type=int, default=16)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--format", choices=["png", "dicom"], default="png")

    s = sub.add_parser("summary", help="parameter counts of G, D and the GAN (the paper's Table 3)")
    s.add_argument("--image-size", type=int, default=256)
    s.add_argument("--backbone", default="xception")
    s.add_argument("--backbone-weights", default="none", help="imagenet | none | PATH")
    s.add_argument("--backbone-mode", choices=["frozen", "trainable"], default=None)
    s.add_argument("--d-head", default="auto", help="auto | paper | projected (both are printed)")

    s = sub.add_parser("prepare", help="de-identify, decode, split and shard a data set")
    s.add_argument("source", help="folder, .zip, gs://bucket/prefix or builtin://phantom")
    s.add_argument("--out", required=True, help="storage root; the data set goes to datasets/<name>/<hash>/")
    s.add_argument("--image-size", type=int, required=True)
    s.add_argument("--name", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--min-frames", type=int, default=8, help="fail when fewer good frames remain")
    s.add_argument("--phantom-frames", type=int, default=512, help="size of builtin://phantom")
    s.add_argument("--dtype", choices=["auto", "uint8", "uint16"], default="auto",
                   help="stored pixel type; auto: uint16 when any input has more than 8 bits")
    s.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    s.add_argument("--max-pixels-mb", type=int, default=1024,
                   help="refuse an input whose declared decoded pixels exceed this (checked before decoding)")

    s = sub.add_parser("train", help="train the GAN; run again with the same --out to resume")
    TrainConfig.add_arguments(s)  # one flag per TrainConfig field, with its help

    s = sub.add_parser("evaluate", help="measure a trained run against real frames")
    s.add_argument("--run", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--n", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="where metrics.json and pictures go (default: the run)")
    s.add_argument("--feature-extractor", default="auto",
                   help="auto | inceptionv3 | inceptionv3-random (FID/KID/precision/recall feature space)")
    s.add_argument("--inception-weights", default="imagenet", help="imagenet | PATH | gs://… (InceptionV3)")
    s.add_argument("--prdc-k", type=int, default=3, help="k of the k-NN manifolds for precision/recall")
    s.add_argument("--pretrained-metrics", default="auto", choices=("auto", "on", "off"),
                   help="*_efflite0 metrics and the linear probe on ImageNet EfficientNet-Lite0 features: "
                        "auto (when its weights package is installed), on (required), off")
    s.add_argument("--checkpoint", default="latest", choices=("latest", "best"),
                   help="judge the newest checkpoint, or every kept one and report the best by --criterion "
                        "that raises no collapse alarm")
    s.add_argument("--criterion", default="auto",
                   help="with --checkpoint best: the metric to rank by (auto: ratio_to_floor, else "
                        "fd_efflite0, else swd)")

    _tracker_parser(sub)

    s = sub.add_parser("export", help="export the generator as a TF Serving SavedModel")
    s.add_argument("--run", required=True)
    s.add_argument("--model-repository", required=True)
    s.add_argument("--model-name", default="generator")
    s.add_argument("--version", type=int, default=None, help="default: one more than the newest")

    s = sub.add_parser("push", help="copy an exported model into the served repository if it passes the gate")
    s.add_argument("--model", required=True, help="exported SavedModel directory")
    s.add_argument("--model-repository", required=True)
    s.add_argument("--model-name", default="generator")
    s.add_argument("--metrics", required=True, help="metrics.json of the new model")
    s.add_argument("--margin", type=float, default=0.0)
    s.add_argument("--utility-report", default="", help="results.json of `medsynth utility`")
    s.add_argument("--require-utility", action="store_true",
                   help="refuse unless the utility report says synthetic frames did not harm the tracker")
    s.add_argument("--metric", default="auto",
                   help="gate metric: auto (the first of ratio_to_floor, fd_efflite0, swd that both the new "
                        "and the served model have) or a metric such as swd_ratio, fd_efflite0")

    s = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    s.add_argument("--out", default="pipelines/medsynth_train.yaml")
    s.add_argument("--backbones", default=None, help="comma-separated candidates: backbones or "
                   "configurations (medsynth.train.candidates); default: the 8 of Table 2")
    s.add_argument("--gpu-type", default=None,
                   help="GKE accelerator label for a node selector, e.g. nvidia-l4")
    s.add_argument("--spot", action="store_true", help="let training pods run on spot nodes (they resume)")
    s.add_argument("--credentials-secret", default=None,
                   help="secret with a key.json for GCS (default: Workload Identity, no key)")
    s.add_argument("--multi-node", default=None, metavar="mpijob|tfjob",
                   help="run the final training as a multi-node MPIJob (Horovod) or TFJob "
                        "(MultiWorkerMirrored) with the run parameters `workers` and `gpus`")

    s = sub.add_parser("serve", help="serve a model repository with TF Serving's REST and gRPC APIs")
    s.add_argument("--model-base-path", "--model_base_path", dest="model_base_path", required=True,
                   help="directory or gs:// prefix holding <version>/ SavedModels")
    s.add_argument("--model-name", "--model_name", dest="model_name", default="generator")
    s.add_argument("--rest-port", "--rest_api_port", dest="rest_port", type=int, default=8501,
                   help="0: any free port; -1: no REST")
    s.add_argument("--grpc-port", "--port", dest="grpc_port", type=int, default=8500,
                   help="0: any free port; -1: no gRPC")
    s.add_argument("--host", default="0.0.0.0", help="address to listen on")
    s.add_argument("--file-system-poll-wait-seconds", "--file_system_poll_wait_seconds",
                   dest="file_system_poll_wait_seconds", type=float, default=2.0,
                   help="how often to look for new versions (0: only at start-up)")
    s.add_argument("--max-images-per-request", type=int, default=64)
    s.add_argument("--max-request-bytes", type=int, default=4 * 1024 * 1024)

    s = sub.add_parser("generate", help="ask a TF Serving endpoint for synthetic frames")
    s.add_argument("--endpoint", default=None, help="REST endpoint, e.g. http://localhost:8501")
    s.add_argument("--grpc", default=None, help="gRPC endpoint, e.g. localhost:8500 (used if given)")
    s.add_argument("--model", default="generator")
    s.add_argument("-n", type=int, default=None,
                   help="number of images (default 16; with --keypoints: one per labelled image entry)")
    s.add_argument("--keypoints", default=None, metavar="FILE",
                   help="COCO Keypoints JSON: one frame per labelled image entry, drawn for its key points "
                        "by a model trained with --condition keypoints; annotations.json is written beside")
    s.add_argument("--seed", type=int, default=None, help="0 .. 2**31-1; default: drawn and recorded")
    s.add_argument("--version", type=int, default=None, help="default: the version served now")
    s.add_argument("--out", required=True, help="directory for the images")
    s.add_argument("--format", choices=["png", "dicom"], default="png")
    s.add_argument("--max-per-request", type=int, default=16)
    s.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    s.add_argument("--retries", type=int, default=5, help="retries of transient errors, with backoff")

    s = sub.add_parser("submit", help="create a pipeline run on a Kubeflow host",
                       description="Create a medsynth-train run with kfp.Client. Exit codes: 0 created "
                                   "(with --wait: SUCCEEDED); 1 the run FAILED, was CANCELED or SKIPPED; "
                                   "2 bad input, an unreachable host, an API error or a --timeout.")
    _kfp_parser_args(s, job=True)
    s.add_argument("--experiment", default="medsynth", help="created when missing")
    s.add_argument("--run-name", default=None, help="default: medsynth-train <UTC time>")
    s.add_argument("--wait", action="store_true", help="follow the run to its end, with progress")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after S seconds")
    s.add_argument("--poll", type=float, default=10.0, help="with --wait: seconds between status checks")

    s = sub.add_parser("schedule", help="create or manage a recurring retraining run",
                       description="Create a recurring run from standard 5-field cron (minute hour "
                                   "day-of-month month day-of-week), converted to KFP's 6-field cron that "
                                   "starts with seconds ('0 3 * * 1' becomes '0 0 3 * * 1', Mondays 03:00 "
                                   "in the KFP scheduler's time zone, UTC unless configured). A 6-field "
                                   "expression is taken as KFP's own; @daily, @weekly, @every 6h work too. "
                                   "Or manage one by name or id.")
    _kfp_parser_args(s, job=True)
    action = s.add_mutually_exclusive_group(required=True)
    action.add_argument("--cron", default=None, help="create: e.g. '0 3 * * 1' (Mondays 03:00)")
    action.add_argument("--enable", metavar="NAME|ID", default=None)
    action.add_argument("--disable", metavar="NAME|ID", default=None)
    action.add_argument("--delete", metavar="NAME|ID", default=None)
    action.add_argument("--list", action="store_true", help="list recurring runs")
    s.add_argument("--name", default="medsynth-retrain", help="name of the recurring run to create")
    s.add_argument("--experiment", default=None, help="create: default medsynth; list: filter")
    s.add_argument("--max-concurrency", type=int, default=1, help="runs of this schedule at once")
    s.add_argument("--catchup", action="store_true", help="backfill the runs missed while disabled")
    s.add_argument("--paused", action="store_true", help="create it disabled")

    s = sub.add_parser("utility", help="measure whether synthetic labelled frames help a key-point tracker",
                       description="For each seed and N real labelled frames, trackers with the same steps "
                                   "train in every arm: real (the N frames), augmented (+ rotation, zoom, "
                                   "gamma), self-training (+ the unlabelled training frames the real "
                                   "tracker labels with confidence), mixed (+ synthetic frames in each "
                                   "batch), pretrain-finetune (synthetic frames first, then real) and "
                                   "augmented-mixed (mixed with augmented's augmentation); the "
                                   "key-point-conditioned generator learns from every training frame. "
                                   "Judged on the held-out real frames; resumable: run it again to "
                                   "continue. Exit 1 with --fail-if-worse when synthetic frames made the "
                                   "tracker worse than real frames alone.")
    u = {f.name: f.default for f in dataclasses.fields(UtilityConfig)}  # the defaults, in one place
    s.add_argument("--data", default="builtin://phantom", help="a labelled data set or source")
    s.add_argument("--out", required=True, help="the experiment's directory (local)")
    s.add_argument("--image-size", type=int, default=u["image_size"])
    s.add_argument("--n-real", default=",".join(map(str, u["n_real"])),
                   help="comma-separated N, real labelled frames (%(default)s)")
    s.add_argument("--seeds", default=",".join(map(str, u["seeds"])), help="comma-separated (%(default)s)")
    s.add_argument("--arms", default=",".join(ARMS), help="comma-separated, real among them (%(default)s)")
    s.add_argument("--n-synthetic", type=int, default=u["n_synthetic"],
                   help="M synthetic frames of the arms that use them (%(default)s)")
    s.add_argument("--gan-config", default=u["gan_config"],
                   help="the conditional generator: a configuration of medsynth.train.candidates or a D "
                        "backbone (%(default)s)")
    s.add_argument("--gan-steps", type=int, default=u["gan_steps"],
                   help="the conditional generator's steps (%(default)s)")
    s.add_argument("--tracker-steps", type=int, default=u["tracker_steps"],
                   help="tracker steps, every arm (%(default)s)")
    s.add_argument("--synthetic-fraction", type=float, default=u["synthetic_fraction"],
                   help="mixed: synthetic share of each batch")
    s.add_argument("--pretrain-share", type=float, default=u["pretrain_share"],
                   help="pretrain-finetune: share of the tracker steps on synthetic frames alone")
    s.add_argument("--pseudo-confidence", type=float, default=u["pseudo_confidence"],
                   help="self-training: keep an unlabelled frame when its tip's heat-map peak reaches this")
    s.add_argument("--pseudo-fraction", type=float, default=u["pseudo_fraction"],
                   help="self-training: pseudo-labelled share of each batch")
    s.add_argument("--phantom-frames", type=int, default=u["phantom_frames"], help="frames of builtin://phantom")
    s.add_argument("--publish", default="", metavar="DIR",
                   help="also write the report as DIR/utility-<size>px-<date>.* (e.g. bench/results)")
    s.add_argument("--fail-if-worse", action="store_true", help="exit 1 if synthetic frames hurt")

    s = sub.add_parser("runs", help="list recent pipeline runs with their state")
    _kfp_parser_args(s, job=False)
    s.add_argument("--experiment", default=None, help="only this experiment's runs")
    s.add_argument("-n", type=int, default=20, help="how many, newest first")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ logging: cuDNN registration and such noise
    choose_onednn()  # before TensorFlow loads; the tasks a command starts inherit it
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args) or 0
    except MedsynthError as e:
        print(f"medsynth {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"medsynth {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
