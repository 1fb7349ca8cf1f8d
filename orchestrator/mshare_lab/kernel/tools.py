"""Running the external tools the kernel area needs (make, patch, tar, git, apt)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ToolError
from ..processes import stream_to_log


def run(cmd: Sequence[str | Path], *, cwd: Path | None = None, what: str | None = None,
        env: dict[str, str] | None = None) -> str:
    """Run a command to completion and return its stdout; ToolError with stderr on failure."""
    argv = [str(c) for c in cmd]
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, errors="replace")
    except FileNotFoundError as exc:
        raise ToolError(f"{argv[0]} is not installed", hint="run scripts/setup") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ToolError(f"{what or ' '.join(argv[:3])} failed (exit {done.returncode}): {tail}")
    return done.stdout


def stream(cmd: Sequence[str | Path], *, cwd: Path | None, log: Path, on_line: Callable[[str], None],
           what: str, env: dict[str, str] | None = None) -> None:
    """Run a long command (make and its jobs), output appended to ``log``, each line to ``on_line``;
    on Ctrl-C the whole process group is killed and reaped before the interrupt propagates."""
    stream_to_log(cmd, cwd=cwd, log=log, on_line=on_line, what=what, env=env)
