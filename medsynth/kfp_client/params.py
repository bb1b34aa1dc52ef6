"""A compiled pipeline's run-time parameters, and values typed and checked against them before sending."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsynth.errors import ConfigError
from medsynth.kfp_client.errors import one_line


@dataclass(frozen=True)
class ParamSpec:
    """One run-time parameter of a compiled pipeline (root inputDefinitions)."""

    name: str
    type: str  # KFP ParameterType: STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    default: Any = None
    optional: bool = True


_TYPE_WORDS = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "true or false",
    "LIST": "a JSON list",
    "STRUCT": "a JSON object",
}


def parse_param_args(items: Sequence[str]) -> dict[str, str]:
    """`["image_size=128", "dataset_uri=gs://b/x?a=b"]` → dict; splits at the first `=`."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"--param {item!r} is malformed: write KEY=VALUE, e.g. --param image_size=128")
        if key in out:
            raise ConfigError(f"--param {key} is given twice ({out[key]!r} and {value!r}): keep one")
        out[key] = value
    return out


def load_package(package: str | Path) -> dict:
    """The PipelineSpec of a compiled package (.yaml/.yml; the first YAML document)."""
    import yaml

    path = Path(package)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"--package {path}: expected a compiled pipeline .yaml (from `medsynth compile`)")
    try:
        with path.open() as f:
            spec = next(iter(yaml.safe_load_all(f)), None)
    except OSError as e:
        raise ConfigError(f"--package {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--package {path}: not valid YAML ({one_line(str(e))[:200]})") from None
    if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
        raise ConfigError(f"--package {path}: not a compiled KFP pipeline (no pipelineInfo/root)")
    return spec


def pipeline_parameters(spec: Mapping) -> dict[str, ParamSpec]:
    """The run-time parameters a compiled pipeline declares, with their KFP types and defaults."""
    params = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}) or {}
    return {
        name: ParamSpec(
            name=name,
            type=p.get("parameterType", "STRING"),
            default=p.get("defaultValue"),
            optional=bool(p.get("isOptional", "defaultValue" in p)),
        )
        for name, p in params.items()
    }


def coerce_params(values: Mapping[str, Any], specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """Check names and convert values (strings from the command line, or Python values) to the
    pipeline's types, so a typo or a wrong type fails here, not minutes later on the cluster."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown pipeline parameter {name!r}{hint}; valid: {', '.join(sorted(specs))}"
            )
        out[name] = _coerce(spec, value)
    missing = [s.name for s in specs.values() if not s.optional and s.name not in out]
    if missing:
        raise ConfigError(f"the pipeline needs these parameters: {', '.join(sorted(missing))} "
                          "(pass --param NAME=VALUE)")
    return out


def _coerce(spec: ParamSpec, value: Any) -> Any:
    bad = ConfigError(f"parameter {spec.name}={value!r}: must be {_TYPE_WORDS.get(spec.type, spec.type)}")
    t = spec.type
    if isinstance(value, str) and t not in ("STRING",):
        text = value.strip()
        if t == "NUMBER_INTEGER":
            if not re.fullmatch(r"[+-]?\d+", text):
                raise bad
            return int(text)
        if t == "NUMBER_DOUBLE":
            try:
                number = float(text)
            except ValueError:
                raise bad from None
            if number != number or number in (float("inf"), float("-inf")):
                raise bad
            return number
        if t == "BOOLEAN":
            low = text.lower()
            if low in ("true", "1", "yes"):
                return True
            if low in ("false", "0", "no"):
                return False
            raise bad
        if t in ("LIST", "STRUCT"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise bad from None
    if t == "STRING":
        if not isinstance(value, str):
            raise bad
        return value
    if t == "NUMBER_INTEGER":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if t == "NUMBER_DOUBLE":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if t == "BOOLEAN":
        if not isinstance(value, bool):
            raise bad
        return value
    if t == "LIST" and not isinstance(value, list):
        raise bad
    if t == "STRUCT" and not isinstance(value, dict):
        raise bad
    return value
