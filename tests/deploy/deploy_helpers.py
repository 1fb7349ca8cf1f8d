"""Helpers of the deploy area's tests (fixtures in conftest.py).

``loopback_sshd`` is a real OpenSSH server on 127.0.0.1 with its own host key that
accepts only a lab key made for the test. It stands in for a full guest's sshd so that
the ansible-runner and Fabric plumbing (inventory, known_hosts checking, async tasks,
fetch, failure reporting, cleanup) runs for real without booting a VM; the guest-side
settings the ``prepare`` role changes are skipped against it (they would change this
host), and the VM tests cover them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from mshare_lab.deploy.ansible import control_dir_prefix
from mshare_lab.deploy.target import SshTarget, write_known_hosts

SSHD = "/usr/sbin/sshd"


@dataclass
class LoopbackSshd:
    port: int
    host_public_key: str
    process: subprocess.Popen
    target: SshTarget
    directory: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def processes_mentioning(text: str) -> list[str]:
    """'pid: command line' of every other process whose command line contains ``text``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline[:200]}")
    return found


def control_masters(workdir: Path) -> list[str]:
    """SSH ControlMaster processes of the play run in ``workdir``."""
    return processes_mentioning(control_dir_prefix(workdir))


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)
    path.chmod(0o600)
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"sshd did not listen on 127.0.0.1:{port}")


def start_sshd(directory: Path, name: str = "loopback-guest") -> LoopbackSshd:
    if not Path(SSHD).exists():
        pytest.fail("sshd is not installed: the deploy tests need openssh-server (scripts/setup)")
    directory.mkdir(parents=True, exist_ok=True)
    host_pub = _keygen(directory / "host_ed25519", "loopback-host")
    _keygen(directory / "lab_ed25519", "mshare-lab-test")
    authorized = directory / "authorized_keys"
    shutil.copy(directory / "lab_ed25519.pub", authorized)
    authorized.chmod(0o600)
    port = free_port()
    config = directory / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {directory / 'host_ed25519'}",
        f"AuthorizedKeysFile {authorized}",
        f"PidFile {directory / 'sshd.pid'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # the temp dir lives under the world-writable /tmp
        "StrictModes no",
        "Subsystem sftp /usr/lib/openssh/sftp-server",
        "LogLevel ERROR",
    ]) + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation dir
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=open(directory / "sshd.log", "w"))
    wait_listening(port)
    known_hosts = write_known_hosts(directory / "known_hosts", [("127.0.0.1", port, host_pub)])
    target = SshTarget(name=name, host="127.0.0.1", port=port, key=directory / "lab_ed25519",
                       known_hosts=known_hosts)
    return LoopbackSshd(port, host_pub, process, target, directory)
