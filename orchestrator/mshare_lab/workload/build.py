"""Building the static ``mshare-sga`` binary, and the kernel-parameter flags it takes.

The binary is cached under the lab home by a hash of its sources, so every area (local
runs, the micro image, full guests) gets the same file and a source change rebuilds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, ToolError
from ..paths import REPO_ROOT, lab_home

SOURCE_DIR = REPO_ROOT / "workloads" / "sga"
BINARY_NAME = "mshare-sga"


def source_hash(source_dir: Path = SOURCE_DIR) -> str:
    """Hash of everything make reads: the sources, the header and the Makefile."""
    digest = hashlib.sha256()
    files = sorted(p for p in source_dir.iterdir()
                   if p.is_file() and (p.suffix in (".c", ".h") or p.name == "Makefile"))
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_binary(source_dir: Path = SOURCE_DIR, cache_root: Path | None = None) -> Path:
    """The static mshare-sga for the current sources, built once per source hash."""
    cache_root = cache_root or lab_home() / "workload"
    out_dir = cache_root / source_hash(source_dir)
    binary = out_dir / BINARY_NAME
    if binary.exists():
        return binary
    out_dir.mkdir(parents=True, exist_ok=True)
    # concurrent test sessions or areas may ask at once: one builds, the others wait
    with open(out_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        _make(source_dir, out_dir, binary)
    return binary


def _make(source_dir: Path, out_dir: Path, binary: Path) -> None:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        raise ToolError("make and a C compiler are needed to build mshare-sga",
                        hint="install build-essential (scripts/setup)")
    log = out_dir / "build.log"
    staging = out_dir / "staging"
    staging.mkdir(exist_ok=True)
    with open(log, "w") as log_file:
        proc = subprocess.run(["make", "-C", str(source_dir), f"OUT={staging}"],
                              stdout=log_file, stderr=subprocess.STDOUT, check=False)
    built = staging / BINARY_NAME
    if proc.returncode != 0 or not built.exists():
        raise ToolError(f"building mshare-sga failed (make exit {proc.returncode})", log=log)
    # rename is atomic: a reader never sees a half-written binary
    built.rename(binary)
    staging.rmdir()


def kernel_flags(mechanisms: Mapping[str, Any]) -> list[str]:
    """mshare-sga flags for a kernel artifact's ``metadata.json`` ``mechanisms`` section.

    Only what the kernel's description states becomes a flag; absent parameters stay
    absent, so the workload reports the mechanism as unsupported instead of guessing.
    """
    flags: list[str] = []
    syscall = mechanisms.get("mshare-syscall") or {}
    if syscall.get("nr_mshare") is not None and syscall.get("nr_mshare_unlink") is not None:
        flags += ["--mshare-syscall-nr", f"{int(syscall['nr_mshare'])},{int(syscall['nr_mshare_unlink'])}"]
    ioctl = mechanisms.get("msharefs-ioctl") or {}
    if ioctl.get("abi") is not None:
        abi = str(ioctl["abi"])
        if abi not in ("2024", "2025"):
            raise ConfigError(f"kernel metadata: msharefs-ioctl abi {abi!r} is not one mshare-sga knows",
                              hint="2024 (RFC v3/v1 numbering) or 2025 (v2/v3 with ftruncate)")
        flags += ["--msharefs-ioctl-abi", abi]
    ptshare = mechanisms.get("ptshare") or {}
    if ptshare.get("map_flag") is not None:
        flags += ["--ptshare-flag", hex(int(ptshare["map_flag"]))]
    return flags
