"""`medsynth …`: a thin command line over the library.

Each command parses flags, builds the step's config and calls one library
function. Any `MedsynthError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from medsynth import __version__
from medsynth.errors import ConfigError, MedsynthError

Handler = Callable[[argparse.Namespace], int | None]
COMMANDS: dict[str, Handler] = {}


def _command(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = fn
        return fn

    return register


def _not_yet(name: str, issue: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        raise ConfigError(f"`medsynth {name}` is not there yet ({issue})")

    return run


# --- demo ---------------------------------------------------------------------------------------
@_command("demo")
def _demo(args: argparse.Namespace) -> int:
    from medsynth.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        pipeline_root=args.pipeline_root,
        image_size=args.image_size,
        steps=args.steps,
        compare_steps=args.compare_steps,
        backbones=_csv(args.backbones),
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(run_demo(cfg))
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
        )
    )
    return 0


# --- prepare ------------------------------------------------------------------------------------
@_command("prepare")
def _prepare(args: argparse.Namespace) -> int:
    from medsynth.data.prepare import PrepareConfig, prepare

    cfg = PrepareConfig(
        source=args.source,
        out=args.out,
        image_size=args.image_size,
        name=args.name,
        seed=args.seed,
        val_fraction=args.val_fraction,
        min_frames=args.min_frames,
        phantom_frames=args.phantom_frames,
    )
    result = prepare(cfg)
    print(f"dataset ready: {result}")
    return 0


# --- train --------------------------------------------------------------------------------------
@_command("train")
def _train(args: argparse.Namespace) -> int:
    from medsynth.train.config import TrainConfig
    from medsynth.train.loop import train

    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        image_size=args.image_size,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        backbone=args.backbone,
        backbone_weights=args.backbone_weights,
        backbone_mode=args.backbone_mode,
        latent_dim=args.latent_dim,
        strategy=args.strategy,
        metrics_port=args.metrics_port,
    )
    result = train(cfg)
    print(f"training done: {result.run_dir} (step {result.step})")
    return 0


# --- evaluate -----------------------------------------------------------------------------------
@_command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from medsynth.evaluate.report import EvaluateConfig, evaluate_run

    cfg = EvaluateConfig(run=args.run, data=args.data, n=args.n, seed=args.seed, out=args.out)
    metrics = evaluate_run(cfg)
    for k, v in sorted(metrics.items()):
        print(f"{k}: {v}")
    return 0


# --- export -------------------------------------------------------------------------------------
@_command("export")
def _export(args: argparse.Namespace) -> int:
    from medsynth.serving.export import ExportConfig, export_run

    cfg = ExportConfig(
        run=args.run,
        model_repository=args.model_repository,
        model_name=args.model_name,
        version=args.version,
    )
    path = export_run(cfg)
    print(f"exported SavedModel: {path}")
    return 0


# --- push ---------------------------------------------------------------------------------------
@_command("push")
def _push(args: argparse.Namespace) -> int:
    from medsynth.serving.push import PushConfig, push

    cfg = PushConfig(
        model=args.model,
        model_repository=args.model_repository,
        model_name=args.model_name,
        metrics=args.metrics,
        margin=args.margin,
    )
    decision = push(cfg)
    print(decision.summary())
    return 0 if decision.pushed else 1


# --- compile ------------------------------------------------------------------------------------
@_command("compile")
def _compile(args: argparse.Namespace) -> int:
    from pipelines.medsynth_train import compile_pipeline

    path = compile_pipeline(args.out, backbones=_csv(args.backbones))
    print(f"compiled pipeline: {path}")
    return 0


COMMANDS["submit"] = _not_yet("submit", "issue 6: the cluster path")
COMMANDS["schedule"] = _not_yet("schedule", "issue 6: the cluster path")
COMMANDS["runs"] = _not_yet("runs", "issue 6: the cluster path")
COMMANDS["serve"] = _not_yet("serve", "issue 5: serving")
COMMANDS["generate"] = _not_yet("generate", "issue 5: serving")


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"empty list: {value!r}")
    return items


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsynth", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="run the whole pipeline locally with kfp.local on phantom data")
    s.add_argument("--pipeline-root", default="demo-out", help="where every artifact goes")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--steps", type=int, default=None, help="steps of the final training")
    s.add_argument("--compare-steps", type=int, default=None, help="steps per backbone in the comparison")
    s.add_argument("--backbones", default=None, help="comma-separated backbones to compare")
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

    s = sub.add_parser("prepare", help="de-identify, decode, split and shard a data set")
    s.add_argument("source", help="folder, .zip, gs://bucket/prefix or builtin://phantom")
    s.add_argument("--out", required=True, help="storage root; the data set goes to datasets/<name>/<hash>/")
    s.add_argument("--image-size", type=int, required=True)
    s.add_argument("--name", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--min-frames", type=int, default=8, help="fail when fewer good frames remain")
    s.add_argument("--phantom-frames", type=int, default=512, help="size of builtin://phantom")

    s = sub.add_parser("train", help="train the GAN; run again with the same --out to resume")
    s.add_argument("--data", required=True, help="prepared data set directory or a source URI")
    s.add_argument("--out", required=True)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--steps", type=int, default=1000)
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--checkpoint-every", type=int, default=100)
    s.add_argument("--sample-every", type=int, default=None)
    s.add_argument("--backbone", default="xception")
    s.add_argument("--backbone-weights", default="imagenet", help="imagenet | none | PATH")
    s.add_argument("--backbone-mode", choices=["frozen", "trainable"], default=None)
    s.add_argument("--latent-dim", type=int, default=100)
    s.add_argument("--strategy", default="auto")
    s.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics here")

    s = sub.add_parser("evaluate", help="measure a trained run against real frames")
    s.add_argument("--run", required=True)
    s.add_argument("--data", required=True)
    s.add_argument("--n", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="where metrics.json and pictures go (default: the run)")

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

    s = sub.add_parser("compile", help="write the pipeline YAML for the Kubeflow UI")
    s.add_argument("--out", default="pipelines/medsynth_train.yaml")
    s.add_argument("--backbones", default=None, help="comma-separated; default: the 8 of Table 2")

    for name, text in [
        ("submit", "create a pipeline run on a Kubeflow host"),
        ("schedule", "create or manage a recurring retraining run"),
        ("runs", "list recent pipeline runs"),
        ("serve", "serve a model repository with TF Serving's REST and gRPC APIs"),
        ("generate", "ask a TF Serving endpoint for synthetic frames"),
    ]:
        sub.add_parser(name, help=text)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
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
