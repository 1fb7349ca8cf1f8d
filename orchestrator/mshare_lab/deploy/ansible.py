"""Drive the lab's playbooks (ansible/) through ansible-runner.

Each run gets its own private data dir under the run's artifacts dir, so the generated
inventory, the extra vars, the runner's event stream and the play's stdout are kept with
the results. Host keys are always checked: every host carries its own known_hosts file
and ``StrictHostKeyChecking=yes``.

Nothing outlives a run: on timeout or Ctrl-C the play is cancelled through the runner
(which kills its process group) and the Ansible workers, which setsid() out of that
group, are killed by pid; the SSH ControlMaster processes, which detach into their own
session and would otherwise linger for ControlPersist seconds, are told to exit and
their socket directory is removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ansible_runner

from ..errors import LabTimeoutError, ProvisionError, ToolError
from ..paths import REPO_ROOT
from .target import SshTarget

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

ANSIBLE_DIR = REPO_ROOT / "ansible"
SITE_PLAYBOOK = "site.yml"
INVENTORY_GROUP = "lab_guests"
#: lines of a failed task's stderr quoted in the error
STDERR_TAIL_LINES = 12


class PlaybookError(ToolError):
    """A task failed on a host; names the task and host and quotes its stderr tail."""

    def __init__(self, message: str, *, task: str | None = None, host: str | None = None,
                 stderr_tail: str = "", log: Path | None = None):
        self.task = task
        self.host = host
        self.stderr_tail = stderr_tail
        self.result: PlaybookResult | None = None   # what the play did until it failed
        super().__init__(message, log=log)


class GuestUnreachableError(ProvisionError):
    """Ansible lost (or never had) the SSH connection to a guest during the play."""

    def __init__(self, message: str, *, task: str | None = None, host: str | None = None):
        self.task = task
        self.host = host
        self.result: PlaybookResult | None = None
        super().__init__(message)


@dataclass
class PlaybookResult:
    status: str                       # ansible-runner status: successful, failed, timeout, canceled
    rc: int
    private_data_dir: Path
    artifact_dir: Path                # runner artifacts: stdout, job_events/, rc, status
    elapsed_s: float
    host_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    #: host -> task name -> the module's result (the last one when a task ran twice)
    task_results: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def task_result(self, host: str, task: str) -> dict[str, Any] | None:
        return self.task_results.get(host, {}).get(task)


def inventory(targets: Sequence[SshTarget], *, control_path_dir: Path | None = None) -> dict[str, Any]:
    """An Ansible inventory (as ansible-runner takes it) for the given guests."""
    hosts: dict[str, dict[str, Any]] = {}
    for target in targets:
        ssh_args = [
            # Ansible shlex-splits these, and ssh itself splits this option's value at
            # spaces (it takes a list of files): quoted twice, a lab home with a space works
            "-o " + shlex.quote(f'UserKnownHostsFile="{target.known_hosts}"'),
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o IdentitiesOnly=yes",
            "-o PasswordAuthentication=no",
            "-o BatchMode=yes",
        ]
        hosts[target.name] = {
            "ansible_host": target.host,
            "ansible_port": target.port,
            "ansible_user": target.user,
            "ansible_ssh_private_key_file": str(target.key),
            "ansible_ssh_extra_args": " ".join(ssh_args),
            "ansible_python_interpreter": "/usr/bin/python3",
        }
    return {"all": {"children": {INVENTORY_GROUP: {"hosts": hosts}}}}


def _ansible_bin_dir() -> Path:
    """The venv's bin dir: ansible-playbook lives next to the interpreter, not on PATH."""
    return Path(sys.executable).parent


def _environment(private_data_dir: Path, control_path_dir: Path, connect_timeout: int) -> dict[str, str]:
    return {
        "PATH": f"{_ansible_bin_dir()}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_ROLES_PATH": str(ANSIBLE_DIR / "roles"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": str(connect_timeout),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOME": str(private_data_dir / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(private_data_dir / "tmp"),
        # keep-alives end a dead connection in ~30 s instead of the TCP default of hours
        "ANSIBLE_SSH_ARGS": ("-o ControlMaster=auto -o ControlPersist=120s "
                             "-o ServerAliveInterval=5 -o ServerAliveCountMax=6"),
        # a short private dir: unix socket paths are limited to 108 bytes
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir),
        # TCG guests are slow to answer the first connection
        "ANSIBLE_SSH_RETRIES": "2",
    }


class _Events:
    """The runner's event stream turned into one progress line per play and host result."""

    _RESULT = {"runner_on_ok": "ok", "runner_on_failed": "FAILED", "runner_on_unreachable": "UNREACHABLE",
               "runner_on_skipped": "skipped"}

    def __init__(self, progress: Progress | None):
        self.progress = progress or (lambda line: None)
        self.failures: list[dict[str, Any]] = []
        self.task_results: dict[str, dict[str, dict[str, Any]]] = {}
        self._polls: dict[tuple[str, str], int] = {}
        self._task_of: dict[str, str] = {}

    def __call__(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_play_start":
            self.progress(f"play: {data.get('play', '')}")
        elif kind in self._RESULT:
            changed = " (changed)" if kind == "runner_on_ok" and (data.get("res") or {}).get("changed") else ""
            self.progress(f"  {self._RESULT[kind]:<11} {data.get('host', '?')}: {data.get('task', '')}{changed}")
            self.task_results.setdefault(data.get("host", "?"), {})[data.get("task", "")] = {
                "status": self._RESULT[kind].lower(), **(data.get("res") or {})}
            if kind == "runner_on_unreachable" or (kind == "runner_on_failed" and not data.get("ignore_errors")):
                self.failures.append({"kind": kind, **data})
        elif kind == "runner_on_start":
            self._task_of[data.get("host", "?")] = data.get("task", "")
        elif kind == "runner_on_async_poll":
            host = data.get("host", "?")
            # the poll events name the async_status helper, not the task that waits
            key = (host, self._task_of.get(host, data.get("task", "")))
            self._polls[key] = self._polls.get(key, 0) + 1
            # one line every ten polls: alive, not chatty
            if self._polls[key] % 10 == 1:
                self.progress(f"  running     {key[0]}: {key[1]} (poll {self._polls[key]})")
        return True


def _stderr_tail(res: dict[str, Any]) -> str:
    text = res.get("stderr") or res.get("module_stderr") or res.get("module_stdout") or ""
    return "\n".join(str(text).rstrip().splitlines()[-STDERR_TAIL_LINES:])


def _failure_error(failure: dict[str, Any], stdout_log: Path) -> "PlaybookError | GuestUnreachableError":
    host, task = failure.get("host", "?"), failure.get("task", "?")
    res = failure.get("res") or {}
    msg = str(res.get("msg") or "").strip()
    if failure["kind"] == "runner_on_unreachable":
        return GuestUnreachableError(f"guest {host} became unreachable during task '{task}': {msg}",
                                     task=task, host=host)
    tail = _stderr_tail(res)
    text = f"task '{task}' failed on {host}: {msg or 'no message'}"
    if tail:
        text += f"; stderr: {' | '.join(tail.splitlines())}"
    return PlaybookError(text, task=task, host=host, stderr_tail=tail, log=stdout_log)


def control_dir_prefix(workdir: Path) -> str:
    """Name prefix of a run's ControlMaster socket dir: short (sockets are limited to 108
    bytes) and tied to the run, so its processes can be told from other runs'."""
    return f"msl-cp-{hashlib.sha256(str(Path(workdir).resolve()).encode()).hexdigest()[:10]}-"


def _close_control_masters(control_path_dir: Path) -> None:
    """Tell every ControlMaster of this run to exit; they live in their own session."""
    if not control_path_dir.is_dir():
        return
    for sock in control_path_dir.iterdir():
        try:
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "mshare-lab-guest"],
                           capture_output=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("could not stop the control master %s: %s", sock, exc)
    shutil.rmtree(control_path_dir, ignore_errors=True)


def run_playbook(targets: Sequence[SshTarget], *, workdir: Path, extravars: dict[str, Any],
                 playbook: str = SITE_PLAYBOOK, progress: Progress | None = None,
                 timeout: float = 1800.0, connect_timeout: int = 30,
                 tags: Iterable[str] = (), skip_tags: Iterable[str] = (),
                 ident: str = "play") -> PlaybookResult:
    """Run ``ansible/<playbook>`` against the targets; raise on any failed task.

    ``workdir`` becomes the private data dir (inventory, env, artifacts/<ident>/).
    Raises PlaybookError (a task failed: task, host, stderr tail), GuestUnreachableError,
    LabTimeoutError (the whole play exceeded ``timeout``) or ToolError.
    """
    if not targets:
        raise ValueError("run_playbook needs at least one target")
    for target in targets:
        target.require_files()
    workdir = Path(workdir)
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    control_path_dir = Path(tempfile.mkdtemp(prefix=control_dir_prefix(workdir)))
    events = _Events(progress)
    stopper = _Stopper(workdir, timeout)
    started = time.monotonic()
    try:
        thread, runner = ansible_runner.run_async(
            private_data_dir=str(workdir),
            project_dir=str(ANSIBLE_DIR),
            playbook=playbook,
            inventory=inventory(targets),
            extravars=extravars,
            envvars=_environment(workdir, control_path_dir, connect_timeout),
            ident=ident,
            tags=",".join(tags) or None,
            skip_tags=",".join(skip_tags) or None,
            settings={"pexpect_timeout": 1, "suppress_ansible_output": True},
            quiet=True,
            event_handler=events,
            cancel_callback=stopper,
        )
        try:
            _wait_for(thread)
        except KeyboardInterrupt:
            stopper.cancel()
            _wait_for(thread, 30)
            raise
    finally:
        stopper.kill_leftovers()
        _close_control_masters(control_path_dir)
    elapsed = time.monotonic() - started
    artifact_dir = Path(runner.config.artifact_dir)
    result = PlaybookResult(status=runner.status, rc=runner.rc if runner.rc is not None else -1,
                            private_data_dir=workdir, artifact_dir=artifact_dir, elapsed_s=elapsed,
                            host_stats=_host_stats(runner), task_results=events.task_results)
    stdout_log = artifact_dir / "stdout"
    if stopper.timed_out:
        raise LabTimeoutError(f"the playbook {playbook} did not finish within {timeout:.0f} s and was stopped; "
                              f"log: {stdout_log}")
    if runner.status == "successful":
        return result
    if events.failures:
        error = _failure_error(events.failures[0], stdout_log)
        error.result = result
        raise error
    tail = _file_tail(stdout_log)
    raise ToolError(f"ansible-playbook {playbook} ended {runner.status} (rc {runner.rc}) without a failed task: "
                    f"{tail}", log=stdout_log)


def _wait_for(thread: threading.Thread, timeout: float | None = None) -> None:
    """Wait for the runner thread without Thread.join: a join cut by Ctrl-C can leave the
    thread looking finished to every later join (Python 3.11), and the play running."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = threading.Event()
    while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
        pause.wait(0.25)


class _Stopper:
    """The runner's cancel callback: stops the play on Ctrl-C or at its deadline.

    ansible-runner kills the play's process group, but Ansible's worker processes call
    setsid() and live on (an async task keeps polling a guest for minutes). So when the
    play is stopped, this first notes every process of the play's tree, and
    ``kill_leftovers`` kills what is still alive once the runner is done.
    """

    def __init__(self, workdir: Path, timeout: float):
        self.workdir = str(workdir)
        self.deadline = time.monotonic() + timeout
        self.timed_out = False
        self._cancelled = threading.Event()
        self._doomed: list[tuple[int, str]] = []

    def cancel(self) -> None:
        self._cancelled.set()

    def __call__(self) -> bool:
        if not self._cancelled.is_set() and time.monotonic() < self.deadline:
            return False
        if not self._cancelled.is_set():
            self.timed_out = True
            self._cancelled.set()
        if not self._doomed:
            self._doomed = _process_tree(self.workdir)
            log.debug("stopping the play: processes %s", self._doomed)
        return True

    def kill_leftovers(self) -> None:
        for pid, start in self._doomed:
            if _start_time(pid) == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _process_tree(marker: str) -> list[tuple[int, str]]:
    """(pid, start time) of our child whose command line names ``marker`` and all its descendants."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    me = os.getpid()
    roots = []
    for pid, parent in parents.items():
        if parent == me:
            try:
                if marker in (Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")):
                    roots.append(pid)
            except OSError:
                continue
    tree, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [child for child, parent in parents.items() if parent == pid]
    return [(pid, _start_time(pid)) for pid in tree if _start_time(pid)]


def _host_stats(runner: Any) -> dict[str, dict[str, int]]:
    stats = runner.stats or {}
    per_host: dict[str, dict[str, int]] = {}
    for counter, hosts in stats.items():
        if isinstance(hosts, dict):
            for host, count in hosts.items():
                per_host.setdefault(host, {})[counter] = count
    return per_host


def _file_tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())
