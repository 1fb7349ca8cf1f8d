"""An SSH target: one full guest as Ansible and Fabric reach it.

Lab guests are reached through a QEMU user-mode port forward on the loopback address,
so the same host (127.0.0.1) appears under many ports; known_hosts entries are therefore
written in the ``[host]:port`` form OpenSSH and paramiko both look up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import NotFoundError


@dataclass(frozen=True)
class SshTarget:
    name: str              # inventory name: the guest's domain name
    host: str              # where the forward listens: 127.0.0.1 for lab guests
    port: int
    key: Path              # the lab's private key (0600)
    known_hosts: Path      # holds this guest's host key; checked, never disabled
    user: str = "root"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def require_files(self) -> None:
        """Fail early with what is missing rather than deep inside ssh."""
        for what, path in (("private key", self.key), ("known_hosts file", self.known_hosts)):
            if not Path(path).is_file():
                raise NotFoundError(f"{self.name}: the lab {what} {path} does not exist",
                                    hint="build the image again (mshare-lab image build debian)")


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """``[127.0.0.1]:2222 ssh-ed25519 AAAA...`` (plain host when on port 22)."""
    parts = public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_key[:40]!r}")
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {parts[0]} {parts[1]}"


def write_known_hosts(path: Path, entries: Iterable[tuple[str, int, str]]) -> Path:
    """Write a known_hosts file with one line per (host, port, public key)."""
    lines = [known_hosts_line(host, port, key) for host, port, key in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o600)
    return path
