"""Running mshare-sga on this host's kernel.

The C coordinator cleans up after itself (clients, region, cgroup, sysctls), including on
SIGINT/SIGTERM.  This module adds the outer guarantee: whatever happens on the Python side
(Ctrl-C, an exception, a coordinator killed with SIGKILL), the coordinator is stopped and
whatever its progress lines said it created is removed.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import LimitError, ToolError, UserError
from ..frames import progress_events
from ..options import WorkloadSpec, workload_argv
from .build import ensure_binary
from .host_state import LocalRunState, remove_resources
from .result import WorkloadResult

log = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]

#: seconds the coordinator gets to tear down thousands of clients after SIGTERM
STOP_GRACE_S = 30.0


def spec_args(spec: WorkloadSpec) -> list[str]:
    """``mshare-sga run`` flags for a spec."""
    return workload_argv(spec)


def run_local(spec: WorkloadSpec, json_path: Path | str | None = None, progress: Progress | None = None,
              *, extra_args: Iterable[str] = (), binary: Path | None = None) -> WorkloadResult:
    """Run one workload on this host and return its result document.

    ``extra_args`` carries kernel-parameter flags (``build.kernel_flags``).  A host limit
    that refuses the run raises ``LimitError``; Ctrl-C stops the run and leaves nothing.
    """
    from ..guest.signals import terminate_as_interrupt

    if json_path and not Path(json_path).parent.is_dir():
        # found now, not after the whole run
        raise UserError(f"--json {json_path}: the directory {Path(json_path).parent} does not exist",
                        hint="create it first or write the document elsewhere")
    binary = binary or ensure_binary()
    # SIGTERM (timeout, CI, systemd) takes the same way out as Ctrl-C: through every finally
    with terminate_as_interrupt():
        state = LocalRunState.open()
        tmp = Path(tempfile.gettempdir()) / f"mshare-lab-local-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            state.add_tmp_dir(tmp)   # recorded before it exists: gc finds it after a SIGKILL
            tmp.mkdir(mode=0o700)
            out = Path(json_path) if json_path else tmp / "result.json"
            if out.exists():
                out.unlink()
            argv = [str(binary), "run", *spec_args(spec), *extra_args, "--json", str(out),
                    "--state-file", str(state.workload_file)]
            log.debug("running %s", " ".join(argv))
            return _supervise(argv, out, progress)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            state.close()


def _supervise(argv: list[str], out: Path, progress: Progress | None) -> WorkloadResult:
    tail: deque[str] = deque(maxlen=40)
    last: dict[str, Any] = {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    finished = False
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            events = list(progress_events([line]))
            if not events:
                tail.append(line.rstrip())
                continue
            last = events[-1]
            if progress:
                progress(last)
        rc = proc.wait()
        finished = True
    finally:
        if not finished:
            _stop(proc)
            sweep(last)
    if rc == 3:
        limit = next((l for l in reversed(tail) if "limit:" in l), "a host limit refused the run")
        raise LimitError(limit.split("limit:", 1)[-1].strip())
    if rc == 2:
        # bad input: the program's own error line, not its usage text
        line = next((l for l in reversed(tail) if "mshare-sga: error:" in l), None)
        text = line.split("error:", 1)[1].strip() if line else "mshare-sga refused its arguments"
        raise UserError(text.replace(" (mshare-sga without arguments prints the usage)", ""))
    if out.exists():
        try:
            return WorkloadResult.from_json(out.read_text())
        finally:
            if rc != 0:
                sweep(last)
    sweep(last)   # the coordinator died without its own cleanup
    own = [l for l in tail if l.startswith("mshare-sga:")]
    detail = "; ".join(own[-2:] or list(tail)[-3:]) or "no output"
    if rc < 0:
        detail = f"killed by signal {-rc}; {detail}"
    raise ToolError(f"mshare-sga exited with {rc} without a result document: {detail}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the coordinator tears down its clients), then SIGKILL if it hangs."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except KeyboardInterrupt:
        # a second Ctrl-C: no more grace
        proc.kill()
        proc.wait()
        raise


def sweep(last_progress: dict[str, Any]) -> list[str]:
    """Remove what a coordinator that did not finish left behind; returns what it removed.

    Clients die with their coordinator (PR_SET_PDEATHSIG); the region file, SysV segment,
    memory cgroup and raised sysctls are named in its progress lines, and go the same way
    ``gc`` removes them from a state file."""
    resources = last_progress.get("resources") or {}
    coordinator = resources.get("coordinator_pid")
    if coordinator:
        _wait_children_gone(int(coordinator))
    return remove_resources({**resources, "limits_raised": last_progress.get("limits_raised") or []})


def _wait_children_gone(coordinator_pid: int, timeout: float = 10.0) -> None:
    """Clients get SIGKILL when their coordinator dies; wait until they are gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _children_of(coordinator_pid) and not os.path.exists(f"/proc/{coordinator_pid}"):
            return
        time.sleep(0.05)


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def progress_line(event: dict[str, Any]) -> str:
    """A short live line for a progress event."""
    phase = event.get("phase", "?")
    parts = [f"[{event.get('wall_s', 0):6.1f}s] {phase}"]
    if phase in ("attach", "barrier", "transactions", "parked", "done"):
        parts.append(f"clients {event.get('clients_attached', 0)}/{event.get('clients_requested', 0)}")
    pt = (event.get("pagetables") or {})
    if pt.get("after_bytes", -1) and pt.get("after_bytes", -1) > 0:
        parts.append(f"PageTables {pt['after_bytes'] >> 20} MiB")
    elif pt.get("peak_bytes", -1) and pt.get("peak_bytes", -1) > 0:
        parts.append(f"PageTables peak {pt['peak_bytes'] >> 20} MiB")
    if event.get("outcome"):
        parts.append(event["outcome"])
    return "  ".join(parts)


def load_result(path: Path | str) -> WorkloadResult:
    return WorkloadResult.from_json(Path(path).read_text())


