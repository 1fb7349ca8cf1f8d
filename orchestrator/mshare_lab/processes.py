"""Child processes the lab starts: run one to a log, end its whole tree, ask if a pid lives.

Long tools (make and its jobs, debootstrap and its dpkg) run in a session of their own so
that on Ctrl-C or failure the whole tree is ended, not just its leader: no compiler or
package manager keeps running after the lab has left.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Sequence

from .errors import ToolError


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True      # it exists, it is just not ours
    return True


def end_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the child's process group, SIGKILL it after 10 s; no-op once it is gone."""
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


def stream_to_log(cmd: Sequence[str | Path], *, log: Path, on_line: Callable[[str], None], what: str,
                  cwd: Path | None = None, env: dict[str, str] | None = None,
                  hint: str | None = None) -> None:
    """Run cmd to completion, its output appended to ``log`` and each line handed to
    ``on_line``; ToolError naming the log on failure, the whole tree ended on any exit."""
    argv = [str(c) for c in cmd]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(argv)}\n")
        sink.flush()
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, text=True, errors="replace",
                                    start_new_session=True)
        except FileNotFoundError as exc:
            raise ToolError(f"{argv[0]} is not installed", hint="run scripts/setup") from exc
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sink.write(line)
                on_line(line.rstrip("\n"))
            code = proc.wait()
        finally:
            end_process_group(proc)
    if code != 0:
        raise ToolError(f"{what} failed (exit {code})", log=log, hint=hint)
