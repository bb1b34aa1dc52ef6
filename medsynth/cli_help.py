"""What `medsynth COMMAND --help` ends with: one example command line that works as written.

Together the local ones are a session to follow top to bottom in an empty folder: a data set, a
first training, its evaluation, export, the gate, serving, and asking the server for frames. The
gate may refuse a short run's model (exit 1: it works as it should), so `serve` serves the exported
repository, which holds the model either way. The Kubeflow ones name a port-forward to the KFP API
(docs/cluster.md) and a bucket of your own.
`tests/test_cli.py` checks that every command has one and that it parses; it runs the quick ones.
"""

from __future__ import annotations

import argparse

_KFP = "--host http://localhost:8888"
_BUCKET = "--pipeline-root gs://my-bucket/pipeline-root --param storage_root=gs://my-bucket/medsynth " \
          "--param model_repository=gs://my-bucket/models"

# `medsynth` + the command's words → the example (without the leading `medsynth `)
EXAMPLES: dict[str, str] = {
    "": "demo --image-size 32 --steps 20 --compare-steps 20 --pipeline-root demo-small",
    "demo": "demo --image-size 32 --steps 20 --compare-steps 20 --pipeline-root demo-small",
    "phantom": "phantom --out phantom-frames -n 16 --size 64",
    "summary": "summary --image-size 256 --backbone xception --backbone-weights none",
    "prepare": "prepare builtin://phantom --out store --image-size 64",
    "train": "train --data builtin://phantom --out runs/first --steps 200",
    "evaluate": "evaluate --run runs/first --data builtin://phantom",
    "tracker": "tracker train --data store/datasets/phantom/* --out runs/tracker --steps 200",
    "tracker train": "tracker train --data store/datasets/phantom/* --out runs/tracker --steps 200",
    "tracker evaluate": "tracker evaluate --run runs/tracker --data store/datasets/phantom/*",
    "utility": "utility --out utility-small --image-size 32 --n-real 64 --n-synthetic 256 --seeds 0 "
               "--gan-steps 100 --tracker-steps 100",
    "export": "export --run runs/first --model-repository exported",
    "push": "push --model exported/generator/1 --metrics runs/first/eval/metrics.json "
            "--model-repository models",
    "compile": "compile --out medsynth_train.yaml --backbones efficientnet_lite0,xception",
    "serve": "serve --model-base-path exported/generator --model-name generator",
    "generate": "generate --endpoint http://localhost:8501 -n 16 --out synthetic",
    "submit": f"submit {_KFP} {_BUCKET} --wait",
    "schedule": f"schedule {_KFP} --cron '0 3 * * 1' {_BUCKET}",
    "runs": f"runs {_KFP} -n 5",
}


def example(prog: str) -> str | None:
    """The example of the parser whose prog is `prog` ("medsynth tracker train"), as a command line."""
    words = prog.split()[1:]
    found = EXAMPLES.get(" ".join(words))
    return None if found is None else f"medsynth {found}"


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose help ends with the command's example, unwrapped so it copies whole.

    Sub-parsers are made with the parent's class, so every command of `medsynth` gets it."""

    def format_help(self) -> str:
        text = super().format_help()
        line = example(self.prog)
        return text if line is None else f"{text}\nexample:\n  {line}\n"
