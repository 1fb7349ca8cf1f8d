"""Kconfig files as data: parse .config and fragments, and check what a fragment asked for.

A fragment line is ``CONFIG_X=value`` or ``# CONFIG_X is not set``; anything else that is
not blank or a comment is a mistake the user should hear about with file:line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, Location

_SET_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Request:
    """One option a fragment asked for, and where."""

    option: str          # CONFIG_X
    value: str           # "y", "m", "n" (for "is not set"), a number or a quoted string
    location: Location

    def line(self) -> str:
        return f"# {self.option} is not set" if self.value == "n" else f"{self.option}={self.value}"


def parse_config(text: str) -> dict[str, str]:
    """A .config as {CONFIG_X: value}; options that are 'not set' map to 'n'."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if match := _SET_RE.match(line):
            values[match.group(1)] = match.group(2)
        elif match := _UNSET_RE.match(line):
            values[match.group(1)] = "n"
    return values


def read_config(path: Path) -> dict[str, str]:
    return parse_config(path.read_text(errors="replace"))


def parse_fragment(path: Path) -> list[Request]:
    """The requests of one fragment; ConfigError with file:line on a malformed line."""
    requests: list[Request] = []
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config fragment: {exc.strerror}",
                          location=Location(path), hint="pass an existing file to --fragment") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = Location(path, number)
        if match := _SET_RE.match(line):
            requests.append(Request(match.group(1), match.group(2), where))
        elif match := _UNSET_RE.match(line):
            requests.append(Request(match.group(1), "n", where))
        elif line and not line.startswith("#"):
            raise ConfigError(f"not a Kconfig line: {line!r}", location=where,
                              hint="write CONFIG_NAME=value or '# CONFIG_NAME is not set'")
    return requests


def effective_requests(fragments: list[Path]) -> dict[str, Request]:
    """What all fragments ask for together: a later fragment overrides an earlier one."""
    merged: dict[str, Request] = {}
    for fragment in fragments:
        for request in parse_fragment(fragment):
            merged[request.option] = request
    return merged


def satisfied(request: Request, final: dict[str, str]) -> bool:
    got = final.get(request.option, "n")
    if request.value == "n":
        return got == "n"
    if request.value == "m":
        # without CONFIG_MODULES a tristate asked as m is built in: still present
        return got in ("m", "y")
    return got == request.value


def dropped(requests: dict[str, Request], final: dict[str, str]) -> list[tuple[Request, str]]:
    """Requests the resolved config did not honour, with what the option ended up as."""
    return [(r, final.get(r.option, "n")) for r in requests.values() if not satisfied(r, final)]
