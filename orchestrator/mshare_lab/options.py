"""One declaration per workload option, feeding the CLI, the matrix file and validation.

As in tmt: an option is declared once here; ``add_arguments`` turns the declarations into
argparse flags and ``parse_mapping`` validates the same keys in a YAML mapping, so the
command line and the matrix file can never drift apart.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping

from . import mechanisms
from .errors import ConfigError, Location
from .units import parse_size


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise ValueError(f"'{value}' is not a whole number")
    number = int(value)
    if number < 1:
        raise ValueError(f"'{value}' must be at least 1")
    return number


def size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"'{value}' must be larger than 0")
    return size


def optional_size(value: Any) -> int | None:
    return None if value in (None, "", "none") else size(value)


def fraction(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"'{value}' must be between 0 and 1")
    return number


def seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not a number of seconds") from None
    if number < 0:
        raise ValueError(f"'{value}' must not be negative")
    return number


def mechanism(value: Any) -> str:
    return mechanisms.get(str(value)).name


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise ValueError(f"'{value}' is not true or false")


@dataclass(frozen=True)
class Option:
    key: str                      # YAML key; the CLI flag is --key with _ as -
    parse: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


WORKLOAD_OPTIONS: tuple[Option, ...] = (
    Option("mechanism", mechanism, "shmem", "sharing mechanism: " + ", ".join(mechanisms.NAMES), "NAME"),
    Option("sga", size, 256 << 20, "size of the shared region (e.g. 256M, 1G)", "SIZE"),
    Option("clients", positive_int, 100, "client processes that attach to the region", "N"),
    Option("duration", seconds, 5.0, "seconds of transactions after every client attached", "SECONDS"),
    Option("populate", fraction, 1.0, "fraction of the region each client touches before transactions", "FRACTION"),
    Option("write_share", fraction, 0.1, "share of transactions that write a block under the latch", "FRACTION"),
    Option("memory_limit", optional_size, None, "memory cgroup limit for the clients (reproduces an OOM)", "SIZE"),
    Option("oom_continue", boolean, False,
           "keep going after the first client is OOM-killed (default: stop there and report)"),
)


@dataclass(frozen=True)
class WorkloadSpec:
    """What one workload run is asked to do; the same on the host and in a guest."""

    mechanism: str = "shmem"
    sga: int = 256 << 20
    clients: int = 100
    duration: float = 5.0
    populate: float = 1.0
    write_share: float = 0.1
    memory_limit: int | None = None
    oom_continue: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "WorkloadSpec":
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _argparse_type(option: Option) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return option.parse(text)
        except ValueError as exc:
            # argparse prints "argument --sga: <this>" and exits 2
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = option.key
    return convert


def add_arguments(parser: argparse.ArgumentParser, options: tuple[Option, ...] = WORKLOAD_OPTIONS) -> None:
    for option in options:
        if isinstance(option.default, bool):
            parser.add_argument(option.flag, dest=option.key, action="store_true", help=option.help)
            continue
        parser.add_argument(option.flag, dest=option.key, type=_argparse_type(option),
                            default=option.default, metavar=option.metavar,
                            help=f"{option.help} (default: {option.default})")


def parse_mapping(data: Mapping[str, Any], *, locate: Callable[[str], Location] | None = None,
                  options: tuple[Option, ...] = WORKLOAD_OPTIONS) -> dict[str, Any]:
    """Validate the workload keys of a mapping; unknown keys are left to the caller."""
    by_key = {o.key: o for o in options}
    result: dict[str, Any] = {}
    for key, value in data.items():
        option = by_key.get(key)
        if option is None:
            continue
        try:
            result[key] = option.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", location=locate(key) if locate else None) from None
    return result


def workload_argv(spec: WorkloadSpec) -> list[str]:
    """The ``mshare-sga run`` flags of a spec, from the same declarations (host and guests)."""
    argv: list[str] = []
    for option in WORKLOAD_OPTIONS:
        value = getattr(spec, option.key)
        if value is None or value is False:
            continue
        if value is True:
            argv.append(option.flag)
        else:
            # 5.0 -> "5": the C side parses integers for most flags
            argv += [option.flag, str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)]
    return argv


def known_keys(options: tuple[Option, ...] = WORKLOAD_OPTIONS) -> set[str]:
    return {o.key for o in options}
