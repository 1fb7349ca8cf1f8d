"""Is this host ready to run lab guests? One check per line, each saying what to do.

``mshare-lab doctor`` prints these; a failed *required* check makes it exit 1. The KVM
check boots a probe guest (cached, see ``guest.probe``); everything else only looks.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import paths
from ..errors import LabError
from ..units import format_size
from .capacity import hugepages_free, mem_available

#: below this the lab home cannot hold a kernel build and a Debian image
DISK_REQUIRED = 5 << 30
DISK_COMFORTABLE = 20 << 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""            # what to do when not ok
    required: bool = True    # a failure makes `doctor` exit 1

    def line(self) -> str:
        mark = "ok  " if self.ok else ("FAIL" if self.required else "warn")
        text = f"{mark} {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -> {self.fix}"


def check_qemu() -> Check:
    binary = shutil.which("qemu-system-x86_64")
    if binary is None:
        return Check("qemu", False, "qemu-system-x86_64 is not installed", "run `bash scripts/setup` "
                     "(apt-get install qemu-system-x86)")
    try:
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("qemu", False, f"{binary} does not run: {exc}", "reinstall qemu-system-x86")
    return Check("qemu", True, f"{binary} ({version.splitlines()[0] if version else 'unknown version'})")


def check_libvirt(uri: str) -> Check:
    from .libvirt_driver import LibvirtDriver
    try:
        with LibvirtDriver(uri) as driver:
            version = driver.conn.getVersion()
            types = sorted(driver.domain_types())
    except LabError as exc:
        return Check("libvirt", False, str(exc), "start the daemons: `virtlogd -d; libvirtd -d` "
                     "(scripts/setup does it)")
    major, minor = version // 1_000_000, version // 1000 % 1000
    if "qemu" not in types:
        return Check("libvirt", False, f"{uri} offers no qemu domain type ({types})",
                     "install qemu-system-x86 and restart libvirtd")
    return Check("libvirt", True, f"{uri} reachable, QEMU {major}.{minor}, domain types {', '.join(types)}")


def check_kvm_device() -> Check:
    """/dev/kvm must be usable by the qemu user, or libvirt re-probes QEMU on every call.

    libvirt caches QEMU's capabilities and drops the cache when KVM looks usable to QEMU
    but not to the qemu user; with /dev/kvm root:root 0600 (no udev rule applied, as in
    containers) every define/start re-probes QEMU: about 40 s per guest start here.
    """
    dev = Path("/dev/kvm")
    if not dev.exists():
        return Check("/dev/kvm", True, "absent: guests use software emulation (TCG)", required=False)
    try:
        user = pwd.getpwnam("libvirt-qemu")
    except KeyError:
        return Check("/dev/kvm", True, "present (no libvirt-qemu user: session libvirt)", required=False)
    st = dev.stat()
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    usable = (st.st_uid == user.pw_uid and st.st_mode & stat.S_IRUSR and st.st_mode & stat.S_IWUSR) or \
             (st.st_gid in groups and st.st_mode & stat.S_IRGRP and st.st_mode & stat.S_IWGRP) or \
             (st.st_mode & stat.S_IROTH and st.st_mode & stat.S_IWOTH)
    if usable:
        return Check("/dev/kvm", True, "readable and writable by libvirt-qemu", required=False)
    return Check("/dev/kvm", False, f"mode {stat.filemode(st.st_mode)} {_owner(st)}: the qemu user cannot open it, "
                 "so libvirt re-probes QEMU on every guest start (~40 s each)",
                 "chgrp kvm /dev/kvm && chmod 660 /dev/kvm", required=False)


def check_kvm_probe(uri: str, kernel: Path | None = None, force: bool = False) -> Check:
    from .libvirt_driver import LibvirtDriver
    from .probe import probe_domain_type
    try:
        with LibvirtDriver(uri) as driver:
            verdict = probe_domain_type(driver, kernel=kernel, force=force)
            driver.remove_scratch()
    except LabError as exc:
        return Check("kvm", False, f"probe failed: {exc}", "see the libvirt check", required=False)
    source = "cached" if verdict.cached else f"probed in {verdict.probe_seconds:.1f} s"
    if verdict.domain_type == "kvm":
        return Check("kvm", True, f"usable ({source})", required=False)
    return Check("kvm", False, f"not usable, guests use TCG, about 10x slower ({verdict.reason}; {source})",
                 "fine for CI-sized scenarios; use a host with working (nested) KVM for big ones", required=False)


def check_hugepages() -> Check:
    free, size = hugepages_free()
    detail = f"{free} free x {format_size(size)}"
    if free:
        return Check("huge pages", True, f"{detail} (for hugepage_backing guests)", required=False)
    return Check("huge pages", False, f"{detail}: guests with hugepage_backing cannot start",
                 "echo N > /proc/sys/vm/nr_hugepages (N = guest RAM / 2 MiB) when you need it", required=False)


def check_memory() -> Check:
    available = mem_available()
    ok = available >= (2 << 30)
    return Check("memory", ok, f"{format_size(available)} available for guests and builds",
                 "stop other guests or builds; micro guests need at least 1 GiB", required=True)


def check_disk(home: Path) -> Check:
    usage = shutil.disk_usage(home)
    detail = f"{format_size(usage.free)} free under {home}"
    if usage.free < DISK_REQUIRED:
        return Check("disk", False, detail, f"free space or point MSHARE_LAB_HOME elsewhere "
                     f"(needs {format_size(DISK_REQUIRED)})")
    if usage.free < DISK_COMFORTABLE:
        return Check("disk", False, detail, f"kernel builds want {format_size(DISK_COMFORTABLE)}; "
                     "run `mshare-lab gc` and remove old kernels", required=False)
    return Check("disk", True, detail)


def check_lab_home(uri: str) -> Check:
    home = paths.lab_home()
    if not os.access(home, os.W_OK):
        return Check("lab home", False, f"{home} is not writable", "fix its ownership or set MSHARE_LAB_HOME")
    if uri.startswith("qemu:///system"):
        # the qemu user must traverse every directory down to the kernels and images
        for parent in [home, *home.parents]:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return Check("lab home", False, f"{parent} is not traversable by the qemu user",
                             f"chmod o+x {parent} or set MSHARE_LAB_HOME to a path under /var/lib")
    return Check("lab home", True, str(home))


def check_leftovers(uri: str) -> Check:
    from .domain import owner_alive
    from .libvirt_driver import LibvirtDriver
    try:
        with LibvirtDriver(uri) as driver:
            domains = driver.lab_domains()
    except LabError as exc:
        return Check("leftovers", False, f"cannot list domains: {exc}", "see the libvirt check", required=False)
    dead = [name for name, meta, _ in domains if meta is None or not owner_alive(meta)]
    if dead:
        return Check("leftovers", False, f"{len(dead)} domain(s) of dead runs: {', '.join(dead[:3])}",
                     "mshare-lab gc", required=False)
    return Check("leftovers", True, f"{len(domains)} lab domain(s), all of running owners", required=False)


def run_checks(uri: str, *, probe: bool = True, reprobe: bool = False, kernel: Path | None = None,
               report: Callable[[Check], None] | None = None) -> list[Check]:
    steps: list[Callable[[], Check]] = [
        check_qemu, lambda: check_libvirt(uri), check_kvm_device,
        *([lambda: check_kvm_probe(uri, kernel, reprobe)] if probe else []),
        check_hugepages, check_memory, lambda: check_disk(paths.lab_home()),
        lambda: check_lab_home(uri), lambda: check_leftovers(uri),
    ]
    results = []
    for step in steps:
        check = step()
        results.append(check)
        if report:
            report(check)
    return results


def _owner(st: os.stat_result) -> str:
    try:
        return f"{pwd.getpwuid(st.st_uid).pw_name}:{grp.getgrgid(st.st_gid).gr_name}"
    except KeyError:
        return f"{st.st_uid}:{st.st_gid}"
