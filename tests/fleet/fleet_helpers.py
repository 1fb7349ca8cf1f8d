"""Helpers of the fleet area's tests (fixtures in conftest.py): a remote libvirt host on
this machine, reached over the deploy tests' loopback sshd, and throw-away pools."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

# the loopback sshd lives with the deploy tests; import it from there rather than move it
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "deploy"))
from deploy_helpers import LoopbackSshd, start_sshd  # noqa: E402

from mshare_lab.fleet.ssh_transport import SshTransport, connect_uri  # noqa: E402

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


@dataclass
class SshLibvirtHost:
    uri: str                    # the plain qemu+ssh URI, as a lab file would give it
    transport: SshTransport
    sshd: LoopbackSshd
    workdir: Path               # where connect_uri writes its wrapper
    connections: list = field(default_factory=list)

    def connect_uri(self) -> str:
        return connect_uri(self.uri, self.transport, self.workdir)

    def open(self) -> libvirt.virConnect:
        """A new libvirt connection over ssh, closed when the fixture ends."""
        conn = libvirt.open(self.connect_uri())
        self.connections.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.connections:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass
        self.connections.clear()


def sshd_children(sshd: LoopbackSshd) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(sshd.process.pid)], capture_output=True, text=True)
    return [int(pid) for pid in done.stdout.split()]


def cut_connection(sshd: LoopbackSshd) -> None:
    """Kill the sshd master and its per-connection children: the host is gone."""
    for pid in [*sshd_children(sshd), sshd.process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sshd.process.wait()


def start_ssh_libvirt_host(directory: Path) -> SshLibvirtHost:
    sshd = start_sshd(directory / "sshd", name="loopback-host")
    home = directory / "lab home"            # a space: paths must be quoted everywhere
    (home / "keys").mkdir(parents=True)
    key = home / "keys" / "lab key"
    shutil.copy(sshd.target.key, key)
    key.chmod(0o600)
    known_hosts = home / "keys" / "known hosts"
    shutil.copy(sshd.target.known_hosts, known_hosts)
    transport = SshTransport(key=key, known_hosts=known_hosts)
    uri = f"qemu+ssh://root@127.0.0.1:{sshd.port}/system"
    return SshLibvirtHost(uri, transport, sshd, home / "hosts" / "loop")


def stop_ssh_libvirt_host(host: SshLibvirtHost) -> None:
    host.close()
    cut_connection(host.sshd)


@dataclass(frozen=True)
class ScratchPool:
    name: str
    path: str


def _local_conn() -> libvirt.virConnect:
    return libvirt.open("qemu:///system")


def remove_pool(name: str) -> None:
    from mshare_lab.fleet.volumes import remove_pool as remove
    conn = _local_conn()
    try:
        remove(conn, name)
    finally:
        conn.close()
