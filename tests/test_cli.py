"""The command line: every command of DESIGN.md §5 is there, and bad input is one clear line with exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from medsynth.cli import main

DESIGN_COMMANDS = [
    "demo",
    "phantom",
    "summary",
    "prepare",
    "train",
    "evaluate",
    "export",
    "push",
    "compile",
    "submit",
    "schedule",
    "serve",
    "generate",
]


def test_help_lists_every_command():
    out = subprocess.run(
        [sys.executable, "-m", "medsynth.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in DESIGN_COMMANDS:
        assert f"\n    {name}" in out, name


@pytest.mark.parametrize("name", DESIGN_COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert "usage: medsynth " + name in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            [
                "train",
                "--data",
                "builtin://phantom",
                "--out",
                "{tmp}/r",
                "--backbone",
                "vgg16",
                "--backbone-weights",
                "none",
            ],
            ["vgg16", "xception"],
        ),
        (
            ["train", "--data", "builtin://phantom", "--out", "{tmp}/r", "--image-size", "100"],
            ["100", "power of two"],
        ),
        (["train", "--data", "builtin://phantom", "--out", "{tmp}/r", "--steps", "-3"], ["--steps", "-3"]),
        (
            [
                "train",
                "--data",
                "{tmp}/nowhere",
                "--out",
                "{tmp}/r",
                "--image-size",
                "32",
                "--steps",
                "1",
                "--backbone",
                "mobilenetv2",
                "--backbone-weights",
                "none",
            ],
            ["nowhere"],
        ),
        (
            ["prepare", "builtin://unicorns", "--out", "{tmp}/d", "--image-size", "32"],
            ["unicorns", "phantom"],
        ),
        (["summary", "--backbone", "alexnet"], ["alexnet"]),
        (["phantom", "--out", "{tmp}/p", "--size", "48"], ["48"]),
        (["compile", "--out", "{tmp}/p.yaml", "--backbones", "resnet50,lenet"], ["lenet"]),
        (["demo", "--pipeline-root", "{tmp}/demo", "--steps", "0"], ["--steps"]),
        (["demo", "--pipeline-root", "{tmp}/demo", "--minutes", "2"], ["--minutes", "2"]),
        (["train", "--data", "builtin://phantom", "--out", "{tmp}/r", "--max-minutes", "0"],
         ["--max-minutes", "0"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, words, tmp_path, capsys):
    keep = tmp_path / "keep.txt"
    keep.write_text("earlier work")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith(f"medsynth {argv[0]}: error: ")]
    assert len(errors) == 1, err  # one clear line, whatever progress was logged before it
    for w in words:
        assert w in errors[0], (w, err)
    assert keep.read_text() == "earlier work"  # nothing written before is lost


def _parsers(parser, words=()):
    """(words, parser) of `medsynth` and of every command and sub-command under it."""
    import argparse

    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*words, name))


def test_every_help_ends_with_an_example_that_parses(tmp_path, monkeypatch):
    import shlex

    from medsynth.cli import build_parser

    seen = []
    for words, parser in _parsers(build_parser()):
        last = parser.format_help().rstrip().splitlines()[-1].strip()
        name = " ".join(("medsynth", *words))
        assert last.startswith(name), f"`{name} --help` does not end with an example: {last!r}"
        argv = shlex.split(last)[1:]
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"the example of `{name} --help` does not parse: {last}")
        assert args.command == (words[0] if words else argv[0])
        seen.append(words)
    assert len(seen) > len(DESIGN_COMMANDS) and ("tracker", "evaluate") in seen
    # the first ones of the session work as written, in an empty folder
    monkeypatch.chdir(tmp_path)
    from medsynth.cli_help import EXAMPLES

    assert main(shlex.split(EXAMPLES["phantom"])) == 0
    assert len(list((tmp_path / "phantom-frames").glob("frame_*.png"))) == 16
