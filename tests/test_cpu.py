"""The oneDNN choice made before TensorFlow loads (medsynth.cpu)."""

import os
import subprocess
import sys

import pytest

from medsynth.cpu import ONEDNN_ENV, choose_onednn, cpu_flags, onednn_wanted


@pytest.mark.parametrize("flags, wanted", [
    ({"avx", "avx2", "fma"}, True),  # AVX2: TensorFlow leaves oneDNN off, medsynth turns it on
    ({"avx2", "avx512f"}, True),  # AVX-512 without VNNI (Skylake-SP): off by TensorFlow's default
    ({"avx2", "avx512f", "avx512_vnni"}, False),  # on by TensorFlow's own default already
    ({"avx2", "avx_vnni"}, False),
    ({"avx2", "amx_tile"}, False),
    ({"sse4_2", "avx"}, False),  # no AVX2: not measured, TensorFlow's default
    (set(), False),  # no /proc/cpuinfo (not Linux x86)
])
def test_onednn_wanted_by_cpu(flags, wanted):
    assert onednn_wanted(flags) is wanted


def test_choice_sets_the_variable_only_where_wanted():
    env: dict[str, str] = {}
    assert "on" in choose_onednn(env, {"avx2"}) and env == {ONEDNN_ENV: "1"}
    env = {}
    assert "default" in choose_onednn(env, {"avx2", "avx512_vnni"}) and env == {}


@pytest.mark.parametrize("value", ["0", "1", "false"])
def test_a_value_the_user_set_is_kept(value):
    env = {ONEDNN_ENV: value}
    line = choose_onednn(env, {"avx2"})
    assert env == {ONEDNN_ENV: value} and f"{ONEDNN_ENV}={value}" in line


def test_a_pipeline_step_chooses_before_tensorflow_loads():
    """A component's first import (medsynth.pipeline_steps) sets the variable, TensorFlow then runs
    oneDNN where the rule wants it, and the fast path reads the same answer."""
    env = {k: v for k, v in os.environ.items() if k != ONEDNN_ENV}
    code = (
        "import os, medsynth.pipeline_steps\n"
        f"print(os.environ.get({ONEDNN_ENV!r}, '-'))\n"
        "from medsynth.cpu import onednn_enabled\n"
        "print(onednn_enabled())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    value, enabled = out.stdout.split()
    if onednn_wanted(cpu_flags()):
        assert (value, enabled) == ("1", "True")
    else:  # TensorFlow's own default for this CPU stands
        assert value == "-"
