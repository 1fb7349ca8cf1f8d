"""Run a test's processes inside a cgroup of their own (pids and memory limits).

A regression in the feasibility check or the cleanup must not be able to take the CI
machine down: the processes a test starts are put (before they exec) into a fresh cgroup
with ``pids.max`` and a memory limit, on cgroup v2 or on the v1 pids/memory hierarchies.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator


def _own(controller: str) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" and Path("/sys/fs/cgroup/cgroup.controllers").exists():
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            if controller in (base / "cgroup.controllers").read_text().split():
                return base
        elif controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controller / path.lstrip("/")
    return None


@contextlib.contextmanager
def limited(name: str, *, pids: int, memory: int) -> Iterator[Callable[[], None]]:
    """Yields a ``preexec_fn`` that moves the child into a cgroup with these limits."""
    made: list[Path] = []
    procs: list[Path] = []
    tag = f"mshare-lab-test-{name}-{os.getpid()}"
    for controller, files in (("pids", {"pids.max": str(pids)}),
                              ("memory", {"memory.max": str(memory), "memory.limit_in_bytes": str(memory)})):
        parent = _own(controller)
        assert parent is not None and parent.is_dir(), f"no {controller} cgroup controller for the test"
        directory = parent / tag
        directory.mkdir(exist_ok=True)
        made.append(directory)
        wrote = False
        for filename, value in files.items():
            if (directory / filename).exists():
                (directory / filename).write_text(value)
                wrote = True
        assert wrote, f"cannot limit {controller} in {directory}"
        procs.append(directory / "cgroup.procs")

    def enter() -> None:
        for path in dict.fromkeys(procs):
            with open(path, "w") as f:
                f.write(str(os.getpid()))

    try:
        yield enter
    finally:
        for directory in made:
            for _ in range(200):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
