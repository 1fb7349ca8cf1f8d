"""SSH keys of the lab: the lab's own key pair (one per lab home) and guest host keys.

The lab key logs into every full guest as root; the guest's host key is generated on the
host when the image is built, so the host knows it before the first connection and never
has to turn host key checking off.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ToolError

LAB_KEY_NAME = "lab_ed25519"


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    @property
    def public_text(self) -> str:
        """``ssh-ed25519 AAAA... comment`` (one line, no newline)."""
        return self.public.read_text().strip()

    @property
    def public_key(self) -> str:
        """``ssh-ed25519 AAAA...`` without the comment (what known_hosts lines carry)."""
        return " ".join(self.public_text.split()[:2])

    def fingerprint(self) -> str:
        return _ssh_keygen(["-l", "-E", "sha256", "-f", str(self.public)]).split()[1]


def _ssh_keygen(args: list[str]) -> str:
    try:
        proc = subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, check=True)
    except FileNotFoundError as exc:
        raise ToolError("ssh-keygen is not installed", hint="install openssh-client (scripts/setup)") from exc
    except subprocess.CalledProcessError as exc:
        raise ToolError(f"ssh-keygen {' '.join(args)} failed: {exc.stderr.strip()}") from exc
    return proc.stdout


def generate(private: Path, comment: str) -> KeyPair:
    """A new ed25519 key pair at private / private.pub (private key mode 0600)."""
    private.parent.mkdir(parents=True, exist_ok=True)
    for stale in (private, private.with_name(private.name + ".pub")):
        stale.unlink(missing_ok=True)
    _ssh_keygen(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)])
    private.chmod(0o600)
    return KeyPair(private, private.with_name(private.name + ".pub"))


def lab_key() -> KeyPair:
    """The lab key pair of this lab home, generated on first use."""
    private = paths.keys_dir() / LAB_KEY_NAME
    public = private.with_name(private.name + ".pub")
    if private.exists() and public.exists():
        return KeyPair(private, public)
    return generate(private, "mshare-lab")
