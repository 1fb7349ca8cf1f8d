"""What a ``mshare-lab local`` run creates on the host, written down before it is created.

Each local run gets a state directory ``<lab home>/runs/local-<time>-<pid>/`` holding
``supervisor.json`` (this process: pid, start time, the temporary directory it made) and
``workload.json``, which mshare-sga rewrites (``--state-file``) before it creates each
thing: the region file, the SysV/hugetlb segment, the memory cgroup, its temporary
mount points, and every sysctl it raises with the value to put back.  A run that ends
in any way Python or the coordinator sees removes the directory itself; after a SIGKILL
of both, ``mshare-lab gc`` finds the directory, sees that neither process is alive
(pid + start time, so a reused pid does not count) and removes what the files name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import paths

log = logging.getLogger(__name__)

PREFIX = "local-"
SUPERVISOR_FILE = "supervisor.json"
WORKLOAD_FILE = "workload.json"
#: only names a run of ours makes are ever removed, whatever a state file says
_REGION_MARK = "mshare-sga-"
_TMP_MARKS = ("mshare-lab-local-", "mshare-sga.")
_SYSCTLS = ("/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max", "/proc/sys/kernel/shmmax",
            "/proc/sys/kernel/shmall", "/proc/sys/vm/nr_hugepages")


def _start_time(pid: int) -> str:
    from ..guest.domain import process_start_time
    return process_start_time(pid)


def _alive(pid: Any, start: Any) -> bool:
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    now = _start_time(pid)
    if not now or (start and str(start) != now):
        return False
    try:
        # a killed process whose parent died too may linger as a zombie until init reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class LocalRunState:
    """The state directory of one local run (create with ``open``, end with ``close``)."""

    directory: Path
    tmp_dirs: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, root: Path | None = None) -> "LocalRunState":
        root = root or paths.runs_dir()
        directory = root / f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{os.getpid()}"
        directory.mkdir(parents=True, exist_ok=True)
        state = cls(directory)
        state._write()
        return state

    @property
    def workload_file(self) -> Path:
        return self.directory / WORKLOAD_FILE

    def add_tmp_dir(self, path: Path | str) -> None:
        """Call before creating the directory."""
        self.tmp_dirs.append(str(path))
        self._write()

    def _write(self) -> None:
        doc = {"schema": "mshare-lab/local-run", "pid": os.getpid(), "start": _start_time(os.getpid()),
               "tmp_dirs": self.tmp_dirs}
        tmp = self.directory / (SUPERVISOR_FILE + ".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self.directory / SUPERVISOR_FILE)

    def close(self) -> None:
        """The run cleaned up after itself: drop the record (whatever the workload left is swept first)."""
        leftover = _read(self.workload_file)
        if leftover:
            remove_resources(leftover)
        shutil.rmtree(self.directory, ignore_errors=True)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def remove_resources(state: dict[str, Any]) -> list[str]:
    """Remove what a workload state names; returns what was removed (or put back)."""
    removed: list[str] = []
    region = state.get("region_path")
    if isinstance(region, str) and _REGION_MARK in os.path.basename(region) and os.path.isfile(region):
        try:
            os.unlink(region)
            removed.append(region)
        except OSError as exc:
            log.warning("could not remove %s: %s", region, exc)
    key = state.get("sysv_key")
    if isinstance(key, int) and not isinstance(key, bool):
        proc = subprocess.run(["ipcrm", "-M", str(key)], capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            removed.append(f"SysV segment key {key:#x}")
    cgroup = state.get("cgroup")
    if isinstance(cgroup, str) and "/mshare-sga-" in cgroup and os.path.isdir(cgroup):
        for _ in range(100):
            try:
                os.rmdir(cgroup)
                removed.append(cgroup)
                break
            except OSError:
                time.sleep(0.05)
    for key in ("tmp_dir", "cgroup_mount_dir"):
        path = state.get(key)
        if isinstance(path, str) and any(m in os.path.basename(path) for m in _TMP_MARKS) and os.path.isdir(path):
            try:
                os.rmdir(path)   # an empty mount point; its mount died with the namespace
                removed.append(path)
            except OSError as exc:
                log.warning("could not remove %s: %s", path, exc)
    # after the segment is gone, so the huge pages it held can be given back
    for raised in reversed(state.get("limits_raised") or []):
        path, old, new = raised.get("path"), raised.get("from"), raised.get("to")
        if path not in _SYSCTLS or old is None:
            continue
        try:
            current = Path(path).read_text().strip()
            if new is not None and current != str(new):
                continue   # someone changed it since: theirs now
            Path(path).write_text(str(old))
            removed.append(f"{path}={old}")
        except OSError as exc:
            log.warning("could not restore %s: %s", path, exc)
    return removed


def sweep_dead(root: Path | None = None) -> list[str]:
    """``gc``: remove what local runs whose processes are all gone left on the host."""
    root = root or paths.runs_dir()
    removed: list[str] = []
    for directory in sorted(root.glob(PREFIX + "*")):
        if not directory.is_dir():
            continue
        supervisor = _read(directory / SUPERVISOR_FILE)
        workload = _read(directory / WORKLOAD_FILE)
        if supervisor is None and time.time() - directory.stat().st_mtime < 60:
            continue   # being created this instant
        if supervisor and _alive(supervisor.get("pid"), supervisor.get("start")):
            continue
        if workload and _alive(workload.get("coordinator_pid"), workload.get("coordinator_start")):
            continue
        if workload:
            removed += remove_resources(workload)
        for tmp in (supervisor or {}).get("tmp_dirs") or []:
            if isinstance(tmp, str) and any(m in os.path.basename(tmp) for m in _TMP_MARKS) and os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(str(directory))
    return removed
