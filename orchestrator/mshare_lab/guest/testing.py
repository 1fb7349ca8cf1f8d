"""Helpers for tests that boot real guests (this area's and other areas').

* ``debian_kernel()``: a bootable kernel (the kernel area's fetched Debian kernel);
* ``tiny_initrd(init, out)``: a busybox initramfs whose /init is the given shell script,
  for guests that must do one precise thing (print, hang, panic, power off);
* ``lab_scratch()``: a directory the qemu user can read (pytest's tmp dirs are 0700);
* ``leftovers(pid)``: what a process left behind (domains, qemu processes, scratch dirs),
  to assert that an interrupted or failed run cleaned up after itself.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import paths

BUSYBOX = Path("/bin/busybox")

#: prologue for tiny inits: a shell with /proc, /sys, /dev and a console
INIT_PROLOGUE = """#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
"""


def debian_kernel() -> Path:
    """The stock Debian cloud kernel's bzImage (downloaded once by the kernel area)."""
    from ..kernel.fetch import fetch_debian
    from ..kernel.progress import quiet
    return Path(fetch_debian(quiet).bzimage)


def tiny_initrd(init_body: str, out: Path) -> Path:
    """A gzip newc initramfs: static busybox + ``INIT_PROLOGUE`` + ``init_body`` as /init."""
    from ..image.cpio import newc_gz
    with tempfile.TemporaryDirectory(prefix=".tiny-", dir=out.parent) as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        for sub in ("proc", "sys", "dev", "tmp"):
            (root / sub).mkdir()
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        init = root / "init"
        init.write_text(INIT_PROLOGUE + init_body + "\n")
        init.chmod(0o755)
        out.write_bytes(newc_gz(root))
    out.chmod(0o644)
    return out


def lab_scratch(prefix: str = "test-") -> Path:
    """A fresh directory under the lab home (traversable by the qemu user); caller removes it."""
    base = paths.lab_home() / "test-tmp"
    base.mkdir(exist_ok=True)
    base.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class Leftovers:
    domains: tuple[str, ...]
    qemu_processes: tuple[int, ...]
    scratch_dirs: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.domains or self.qemu_processes or self.scratch_dirs)


def leftovers(owner_pid: int, uri: str | None = None, run_ids: set[str] | None = None) -> Leftovers:
    """Domains, QEMU processes and scratch dirs that belong to runs of ``owner_pid``.

    ``run_ids``: runs seen earlier (their domains may be gone, their QEMU must be too)."""
    from .libvirt_driver import LibvirtDriver, scratch_root
    with LibvirtDriver(uri) as driver:
        owned = [(name, meta) for name, meta, _ in driver.lab_domains() if meta and meta.owner_pid == owner_pid]
    run_ids = set(run_ids or ()) | {meta.run_id for _, meta in owned}
    scratch = []
    for path in scratch_root().iterdir():
        try:
            if json.loads((path / "owner.json").read_text())["pid"] == owner_pid:
                scratch.append(path.name)
                run_ids.add(path.name)
        except (OSError, ValueError, KeyError):
            continue
    return Leftovers(tuple(sorted(n for n, _ in owned)), qemu_processes_of(run_ids), tuple(sorted(scratch)))


def qemu_processes_of(run_ids: set[str]) -> tuple[int, ...]:
    """PIDs of QEMU processes running a guest of one of these runs."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"qemu-system-x86_64"):
            continue
        text = b" ".join(argv).decode(errors="replace")
        if any(f"guest=mshare-lab-{run_id}-" in text for run_id in run_ids):
            found.append(int(proc.name))
    return tuple(sorted(found))


def all_qemu_processes() -> tuple[int, ...]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip().startswith("qemu-system"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return tuple(sorted(found))


