"""Ad-hoc work on full guests with Fabric: wait for SSH, exec, interactive shell, failure logs.

Every connection logs in with the lab key only (no agent, no ~/.ssh keys, no ssh_config)
and checks the guest's host key against the target's known_hosts file. Fabric's default
is to accept unknown host keys (AutoAddPolicy), so its client is replaced by one with
RejectPolicy before anything connects.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import fabric
import paramiko

from ..errors import BootError, LabTimeoutError, ProvisionError
from .target import SshTarget

log = logging.getLogger(__name__)
# paramiko logs every failed handshake with a traceback from its transport thread; while
# a guest boots that is expected, and wait_for_ssh reports the last failure itself
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

Progress = Callable[[str], None]


def connection(target: SshTarget, *, timeout: float = 10.0) -> fabric.Connection:
    """A Fabric connection (not yet open) that only trusts the target's known_hosts."""
    config = fabric.Config(runtime_ssh_path=os.devnull)   # ignore ~/.ssh/config
    conn = fabric.Connection(
        host=target.host, user=target.user, port=target.port, config=config,
        connect_timeout=int(timeout),
        connect_kwargs={"key_filename": [str(target.key)], "look_for_keys": False,
                        "allow_agent": False, "banner_timeout": timeout, "auth_timeout": timeout},
    )
    conn.client = _checking_client(target)
    return conn


def _checking_client(target: SshTarget) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(target.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


@contextmanager
def connected(target: SshTarget, *, timeout: float = 10.0) -> Iterator[fabric.Connection]:
    conn = connection(target, timeout=timeout)
    try:
        conn.open()
        yield conn
    finally:
        conn.close()


# --- waiting for a booting guest ------------------------------------------------------

class HostKeyMismatchError(ProvisionError):
    """The guest answered with a host key its known_hosts does not hold: never retried."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "connection timed out"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication failed ({exc})"
    if isinstance(exc, paramiko.SSHException) and ("No existing session" in str(exc)
                                                    or "protocol banner" in str(exc)):
        return "the SSH handshake did not complete (sshd not up yet)"
    if isinstance(exc, (EOFError, ConnectionResetError)):
        # QEMU's port forward accepts the TCP connection even while nothing listens inside
        return "connection closed before the SSH banner (sshd not up yet)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def try_login(target: SshTarget, *, timeout: float = 10.0) -> None:
    """One attempt: TCP connect, SSH handshake with host key check, key login, run `true`."""
    client = _checking_client(target)
    try:
        client.connect(target.host, port=target.port, username=target.user,
                       key_filename=str(target.key), look_for_keys=False, allow_agent=False,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout)
        _, stdout, _ = client.exec_command("true", timeout=timeout)
        status = stdout.channel.recv_exit_status()
        if status != 0:
            raise paramiko.SSHException(f"`true` exited {status}")
    finally:
        client.close()


def wait_for_ssh(target: SshTarget, *, timeout: float, progress: Progress | None = None,
                 alive: Callable[[], bool] | None = None, interval: float = 1.0,
                 attempt_timeout: float = 10.0) -> float:
    """Wait until the guest accepts the lab key; returns the seconds waited.

    Raises LabTimeoutError naming host:port and what was tried, HostKeyMismatchError at
    once when the guest's host key is wrong, BootError when ``alive()`` says the guest
    ended while we waited.
    """
    target.require_files()
    started = time.monotonic()
    deadline = started + timeout
    attempts = 0
    last = "no attempt made"
    auth_failures = 0
    while True:
        attempts += 1
        remaining = deadline - time.monotonic()
        try:
            try_login(target, timeout=max(1.0, min(attempt_timeout, remaining)))
            waited = time.monotonic() - started
            if progress:
                progress(f"ssh {target.name} ({target.address}): up after {waited:.1f} s")
            return waited
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatchError(
                f"guest {target.name} at {target.address} offered a host key that {target.known_hosts} "
                f"does not hold ({exc.key.get_name()})",
                hint="the image and its recorded host key disagree: rebuild the image") from exc
        except paramiko.AuthenticationException as exc:
            # sshd is up; a refused lab key does not fix itself (allow for a first-boot race)
            auth_failures += 1
            last = _describe(exc)
            if auth_failures >= 3:
                raise ProvisionError(f"guest {target.name} at {target.address} refuses the lab key "
                                     f"{target.key} for {target.user}",
                                     hint="the image was built with another lab key: rebuild it") from exc
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise HostKeyMismatchError(f"{target.known_hosts} has no host key for {target.address}") from exc
            last = _describe(exc)
        except (OSError, EOFError) as exc:
            last = _describe(exc)
        if alive is not None and not alive():
            raise BootError(f"guest {target.name} ended while waiting for SSH on {target.address} "
                            f"(last attempt: {last})")
        if time.monotonic() >= deadline:
            raise LabTimeoutError(
                f"guest {target.name} did not accept SSH on {target.address} within {timeout:.0f} s: "
                f"{attempts} attempts to log in as {target.user} with {target.key}, last: {last}")
        if progress and attempts % 10 == 0:
            progress(f"ssh {target.name} ({target.address}): waiting ({last})")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


# --- running commands ---------------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    name: str
    exit_code: int            # 255 when the command could not be run (as ssh does)
    stdout: str
    stderr: str
    error: str | None = None  # why it could not be run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None

    def prefixed_lines(self) -> list[str]:
        """The output as ``name: line`` lines, stderr after stdout, then a failure note."""
        lines = [f"{self.name}: {line}" for line in self.stdout.splitlines()]
        lines += [f"{self.name}: {line}" for line in self.stderr.splitlines()]
        if self.error:
            lines.append(f"{self.name}: error: {self.error}")
        elif self.exit_code:
            lines.append(f"{self.name}: exit code {self.exit_code}")
        return lines


def exec_one(target: SshTarget, command: str, *, timeout: float = 60.0) -> ExecResult:
    try:
        with connected(target, timeout=min(timeout, 15.0)) as conn:
            result = conn.run(command, hide=True, warn=True, timeout=timeout, in_stream=False)
        return ExecResult(target.name, result.exited, result.stdout, result.stderr)
    except paramiko.BadHostKeyException as exc:
        return ExecResult(target.name, 255, "", "", f"host key of {target.address} does not match "
                                                    f"{target.known_hosts}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one guest's failure must not hide the others'
        return ExecResult(target.name, 255, "", "", f"{target.address}: {_describe(exc)}")


def exec_all(targets: Sequence[SshTarget], command: str, *, timeout: float = 60.0) -> list[ExecResult]:
    """Run ``command`` on every target at once; results in the targets' order."""
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(targets))) as pool:
        return list(pool.map(lambda t: exec_one(t, command, timeout=timeout), targets))


def shell(target: SshTarget) -> int:
    """An interactive login shell on the guest (a pty, like ssh); returns its exit status."""
    with connected(target) as conn:
        result = conn.shell()
    return int(result.exited or 0)


# --- after a failure --------------------------------------------------------------------------

KERNEL_LOG_COMMAND = ("journalctl -k -b --no-pager -o short-monotonic 2>/dev/null || dmesg")


def gather_failure_logs(target: SshTarget | None, dest: Path, *, console: Path | None = None,
                        timeout: float = 30.0) -> list[Path]:
    """Keep what explains a failure: the guest's kernel log over SSH and its console file.

    Used while something already went wrong, so it never raises: what could not be
    gathered is written to ``gather-errors.txt`` next to what could.
    """
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    problems: list[str] = []
    if console is not None:
        try:
            copy = dest / "console.log"
            shutil.copyfile(console, copy)
            written.append(copy)
        except OSError as exc:
            problems.append(f"console {console}: {exc}")
    if target is not None:
        result = exec_one(target, KERNEL_LOG_COMMAND, timeout=timeout)
        if result.error is None:
            path = dest / "kernel.log"
            path.write_text(result.stdout)
            written.append(path)
        else:
            problems.append(f"kernel log over ssh: {result.error}")
    if problems:
        path = dest / "gather-errors.txt"
        path.write_text("\n".join(problems) + "\n")
        written.append(path)
    return written
