"""Live progress for long kernel work: short lines, throttled so make output stays readable."""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

from ..units import format_seconds

#: what build/fetch call with one short human line at a time
Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def quiet(_line: str) -> None:
    pass


# kbuild's short output: "  CC      mm/shmem.o", "  LD      vmlinux", ...
_KBUILD_LINE = re.compile(r"^\s+([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S+)")


# gcc's diagnostics: "../mm/shmem.c:12:5: error: ...", "init/x.c:3: fatal error: ..."
_COMPILER_ERROR = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)? (?:fatal )?error: (?P<msg>.*)$")


@dataclass(frozen=True)
class CompilerError:
    """The first error the compiler reported: what a developer fixes first."""

    file: str          # relative to the source tree (kbuild's "../" removed)
    line: int
    column: int | None
    message: str

    def __str__(self) -> str:
        col = f":{self.column}" if self.column else ""
        return f"{self.file}:{self.line}{col}: error: {self.message}"


def parse_compiler_error(line: str) -> CompilerError | None:
    match = _COMPILER_ERROR.match(line.strip())
    if not match:
        return None
    file = match.group("file")
    while file.startswith("../"):          # objdir is a child of the tree: srctree is ".."
        file = file[3:]
    column = match.group("col")
    return CompilerError(file, int(match.group("line")), int(column) if column else None, match.group("msg"))


class MakeTail:
    """Counts kbuild steps and reports at most one line every ``interval`` seconds.

    A full kernel build prints thousands of lines; showing each would drown the console,
    showing none looks like a hang. One line per few seconds with the count of objects
    compiled (of about ``expected``, from an earlier build of the same config), the time
    elapsed and an estimate of what is left is the middle ground. The first compiler
    error is kept, so a failed build can name it instead of make's last lines.
    """

    def __init__(self, progress: Progress, *, interval: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 expected: int | None = None):
        self.progress = progress
        self.interval = interval
        self.clock = clock
        self.expected = expected
        self.compiled = 0
        self.steps = 0
        self.first_error: CompilerError | None = None
        self._started = clock()
        self._last_report = self._started
        self._last_target = ""

    def feed(self, line: str) -> None:
        if self.first_error is None and (error := parse_compiler_error(line)):
            self.first_error = error
        match = _KBUILD_LINE.match(line)
        if not match:
            return
        self.steps += 1
        if match.group(1) == "CC":
            self.compiled += 1
        self._last_target = f"{match.group(1)} {match.group(2)}"
        now = self.clock()
        if now - self._last_report >= self.interval:
            self._last_report = now
            self.progress(f"  make: {self.status(now)}; last {self._last_target}")

    def status(self, now: float | None = None) -> str:
        """'1234 of ~2100 objects, 3 min 2 s elapsed, ~2 min 8 s left' (no total: no estimate)."""
        elapsed = (self.clock() if now is None else now) - self._started
        if not self.expected:
            return f"{self.compiled} objects, {format_seconds(elapsed)} elapsed"
        text = f"{self.compiled} of ~{self.expected} objects, {format_seconds(elapsed)} elapsed"
        if 0 < self.compiled < self.expected:
            left = elapsed / self.compiled * (self.expected - self.compiled)
            text += f", ~{format_seconds(left)} left"
        return text
