"""Running the external tools the kernel area needs (make, patch, tar, git, apt)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable, Sequence

from ..errors import ToolError


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
    """Run a long command, appending all output to ``log`` and handing each line to ``on_line``.

    On Ctrl-C the child (make and its jobs, one process group) is killed and reaped before
    the interrupt propagates, so no compiler keeps running after we left.
    """
    argv = [str(c) for c in cmd]
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                on_line(line.rstrip("\n"))
            code = proc.wait()
        except BaseException:
            _kill_group(proc)
            raise
    if code != 0:
        raise ToolError(f"{what} failed (exit {code})", log=log)


def _kill_group(proc: subprocess.Popen) -> None:
    import os
    import signal
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
