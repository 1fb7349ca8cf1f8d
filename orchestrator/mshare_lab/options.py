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


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\s*\d+\s*", str(value)):
        raise ValueError(f"'{value}' is not a whole number")
    number = int(value)
    if number < 1:
        raise ValueError(f"'{value}' must be at least 1")
    return number


def _size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"'{value}' must be larger than 0")
    return size


def _optional_size(value: Any) -> int | None:
    return None if value in (None, "", "none") else _size(value)


def _fraction(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not a number") from None
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"'{value}' must be between 0 and 1")
    return number


def _seconds(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"'{value}' is not a number of seconds") from None
    if number < 0:
        raise ValueError(f"'{value}' must not be negative")
    return number


def _mechanism(value: Any) -> str:
    return mechanisms.get(str(value)).name


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
    Option("mechanism", _mechanism, "shmem", "sharing mechanism: " + ", ".join(mechanisms.NAMES), "NAME"),
    Option("sga", _size, 256 << 20, "size of the shared region (e.g. 256M, 1G)", "SIZE"),
    Option("clients", _positive_int, 100, "client processes that attach to the region", "N"),
    Option("duration", _seconds, 5.0, "seconds of transactions after every client attached", "SECONDS"),
    Option("populate", _fraction, 1.0, "fraction of the region each client touches before transactions", "FRACTION"),
    Option("write_share", _fraction, 0.1, "share of transactions that write a block under the latch", "FRACTION"),
    Option("memory_limit", _optional_size, None, "memory cgroup limit for the clients (reproduces an OOM)", "SIZE"),
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


def known_keys(options: tuple[Option, ...] = WORKLOAD_OPTIONS) -> set[str]:
    return {o.key for o in options}
