"""One scenario from keyword values (the pytest fixture, bisect): the matrix's own parser
and checks, applied to a one-entry matrix, so keys and errors are the matrix's."""

from __future__ import annotations

from typing import Any

import yaml

from ..errors import ConfigError
from .scenario import Scenario


def one_scenario(kernel: str, keys: dict[str, Any], *, where: str) -> Scenario:
    from . import matrix
    entry = dict(keys)
    if "mechanism" in entry:
        entry["mechanisms"] = entry.pop("mechanism")
    text = yaml.safe_dump({"defaults": {"kernels": kernel}, "matrix": [entry]}, sort_keys=False)
    loaded = matrix.loads(text, where)
    if len(loaded.scenarios) != 1:
        raise ConfigError(f"{where}: one scenario wanted; {entry} expands to {len(loaded.scenarios)}")
    return loaded.scenarios[0]


def parse_pairs(text: str, *, what: str) -> dict[str, Any]:
    """'mechanism=shmem, sga=32M, kernel_log=[rcu-stall]' -> a dict (values read as YAML)."""
    try:
        parsed = yaml.safe_load("{" + text.replace("=", ": ") + "}") if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {text!r} is not 'key=value, key=value'") from exc
    if not isinstance(parsed, dict) or any(v is None for v in parsed.values()):
        raise ConfigError(f"{what} {text!r} is not 'key=value, key=value'")
    return parsed
