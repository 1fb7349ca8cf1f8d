"""Running the long external tools of image builds (debootstrap, apt in a chroot, mkfs).

Output goes to a log file; the progress callback gets a short live line now and then.
The tool runs in its own session so that, if we are interrupted (Ctrl-C) or fail, the
whole process tree (debootstrap's dpkg, apt's children) is ended, not just its leader.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

from ..errors import ToolError

Progress = Callable[[str], None]

#: seconds between two progress lines of the same tool
PROGRESS_EVERY = 5.0


def run_logged(cmd: list[str], *, log: Path, label: str, progress: Progress | None = None,
               env: dict[str, str] | None = None, hint: str | None = None) -> None:
    """Run cmd to completion, output appended to log; ToolError (with the log) on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    last_report = 0.0
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        sink.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    env=env, start_new_session=True)
        except FileNotFoundError as exc:
            raise ToolError(f"{cmd[0]} is not installed", hint="run scripts/setup") from exc
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                now = time.monotonic()
                if progress and line.strip() and now - last_report >= PROGRESS_EVERY:
                    last_report = now
                    progress(f"{label}: {line.strip()[:100]}")
            code = proc.wait()
        finally:
            _end(proc)
    if code != 0:
        raise ToolError(f"{label} failed (exit {code})", log=log, hint=hint)


def _end(proc: subprocess.Popen) -> None:
    """Make sure the tool's whole process group is gone (no-op after a normal exit)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
