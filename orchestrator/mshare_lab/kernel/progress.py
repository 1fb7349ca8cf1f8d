"""Live progress for long kernel work: short lines, throttled so make output stays readable."""

from __future__ import annotations

import re
import sys
import time
from typing import Callable

#: what build/fetch call with one short human line at a time
Progress = Callable[[str], None]


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def quiet(_line: str) -> None:
    pass


# kbuild's short output: "  CC      mm/shmem.o", "  LD      vmlinux", ...
_KBUILD_LINE = re.compile(r"^\s+([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S+)")


class MakeTail:
    """Counts kbuild steps and reports at most one line every ``interval`` seconds.

    A full kernel build prints thousands of lines; showing each would drown the console,
    showing none looks like a hang. One line per few seconds with the count and the last
    file compiled is the middle ground.
    """

    def __init__(self, progress: Progress, *, interval: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.progress = progress
        self.interval = interval
        self.clock = clock
        self.compiled = 0
        self.steps = 0
        self._last_report = clock()
        self._last_target = ""

    def feed(self, line: str) -> None:
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
            self.progress(f"  make: {self.compiled} CC, {self.steps} steps; last {self._last_target}")
