"""Running the long external tools of image builds (debootstrap, apt in a chroot, mkfs).

Output goes to a log file; the progress callback gets a short live line now and then.
The tool runs in its own session so that, if we are interrupted (Ctrl-C) or fail, the
whole process tree (debootstrap's dpkg, apt's children) is ended, not just its leader.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..processes import stream_to_log

Progress = Callable[[str], None]

#: seconds between two progress lines of the same tool
PROGRESS_EVERY = 5.0


def run_logged(cmd: list[str], *, log: Path, label: str, progress: Progress | None = None,
               env: dict[str, str] | None = None, hint: str | None = None) -> None:
    """Run cmd to completion, output appended to log; ToolError (with the log) on failure."""
    last_report = 0.0

    def report(line: str) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress and line.strip() and now - last_report >= PROGRESS_EVERY:
            last_report = now
            progress(f"{label}: {line.strip()[:100]}")

    stream_to_log(cmd, log=log, on_line=report, what=label, env=env, hint=hint)
