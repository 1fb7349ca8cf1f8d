"""Is KVM really usable here? Boot a probe guest and see.

/dev/kvm existing, KVM_CREATE_VM succeeding and libvirt offering ``<domain type='kvm'>``
all prove nothing: on a nested machine a KVM guest can hang right after the firmware
("Booting from ROM") forever. The only trustworthy test is a guest that prints kernel
messages. The probe boots a kernel with no initrd under KVM for a few seconds: a working
KVM shows "Linux version ..." (and soon "Kernel panic - not syncing: VFS: Unable to mount
root fs") on the serial console; a broken one shows nothing. The verdict is cached per
host (libvirt URI + host kernel release) in the lab home, so runs do not pay the probe.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .. import paths
from ..errors import InfraError, LabError
from . import console
from .domain import DomainSpec, owner_metadata

if TYPE_CHECKING:
    from .libvirt_driver import LibvirtDriver

log = logging.getLogger(__name__)

#: how long a KVM guest gets to print its first kernel line (TCG would need ~1 s)
PROBE_DEADLINE = 12.0
#: a cached verdict is trusted this long (a host kernel update invalidates it at once)
CACHE_MAX_AGE = 7 * 24 * 3600
# the first lines any x86 Linux prints on a serial console with console=ttyS0
_KERNEL_OUTPUT = re.compile(r"Linux version|Kernel panic|\[\s+\d+\.\d+\]")


@dataclass(frozen=True)
class ProbeVerdict:
    domain_type: str        # "kvm" or "qemu"
    reason: str
    host_release: str
    uri: str
    checked_at: float
    probe_seconds: float
    cached: bool = False


def cache_path() -> Path:
    return paths.lab_home() / "probe" / "domain-type.json"


def probe_domain_type(driver: "LibvirtDriver", *, kernel: Path | None = None,
                      force: bool = False) -> ProbeVerdict:
    release = os.uname().release
    if not force:
        cached = _read_cache(driver.display_uri, release)
        if cached is not None:
            return cached
    started = time.monotonic()
    verdict_type, reason, cacheable = _decide(driver, kernel)
    verdict = ProbeVerdict(domain_type=verdict_type, reason=reason, host_release=release, uri=driver.display_uri,
                           checked_at=time.time(), probe_seconds=round(time.monotonic() - started, 2))
    if verdict_type == "qemu":
        log.warning("KVM is not usable here (%s): guests run under QEMU software emulation (TCG), "
                    "roughly 10x slower", reason)
    if cacheable:
        _write_cache(verdict)
    return verdict


def _decide(driver: "LibvirtDriver", kernel: Path | None) -> tuple[str, str, bool]:
    """(domain type, why, whether the answer may be cached)."""
    # (a remote host's /dev/kvm is not ours to look at: its libvirt and a probe guest say)
    if not driver.remote and not os.path.exists("/dev/kvm"):
        return "qemu", "/dev/kvm does not exist", True
    if "kvm" not in driver.domain_types():
        return "qemu", f"libvirt at {driver.display_uri} offers no kvm domain type", True
    if kernel is None:
        try:
            kernel = _default_kernel()
        except (ImportError, LabError) as exc:
            # no verdict worth keeping: probe again once a kernel is there
            return "qemu", f"no kernel to boot a probe guest with ({exc})", False
    seen, detail = boot_probe(driver, kernel)
    if seen:
        return "kvm", "a KVM probe guest printed kernel messages", True
    # a probe that never started for a reason of its own (a file QEMU cannot read, a full
    # disk) says nothing about KVM: decide on TCG for now but probe again next time
    started_or_kvm = not detail.startswith("does not start") or "kvm" in detail.lower()
    return "qemu", f"KVM probe guest: {detail}", started_or_kvm


def boot_probe(driver: "LibvirtDriver", kernel: Path, *, domain_type: str = "kvm",
               deadline: float = PROBE_DEADLINE) -> tuple[bool, str]:
    """Boot ``kernel`` without an initrd; (kernel output seen, what happened)."""
    workdir = driver.scratch_dir()
    name = driver.new_name()
    console_path = workdir / f"{name}.probe-console.log"
    spec = DomainSpec(name=name, memory=256 << 20, vcpus=1, kernel=kernel, domain_type=domain_type,
                      console_path=console_path, cmdline="console=ttyS0 panic=-1",
                      metadata=owner_metadata(driver.run_id, files=(console_path,)))
    try:
        with driver.boot(spec) as guest:
            end = time.monotonic() + deadline
            while time.monotonic() < end:
                if _KERNEL_OUTPUT.search(console.read_text(console_path)):
                    return True, "kernel output"
                if guest.wait(0.25):
                    break
            text = console.read_text(console_path)
            if _KERNEL_OUTPUT.search(text):
                return True, "kernel output"
            last = text.strip().splitlines()[-1:] or ["nothing"]
            return False, f"no kernel message within {deadline:.0f} s (console: {last[0][:80]})"
    except InfraError as exc:
        return False, f"does not start ({_qemu_complaint(exc.message)})"


def _qemu_complaint(message: str) -> str:
    """QEMU's own error ("failed to set MSR 0x10a to 0x69") out of libvirt's long message."""
    match = re.search(r"qemu-system-\S+: (?:error: )?([^\n]+)", message)
    return (match.group(1) if match else message.splitlines()[0])[:160]


def _default_kernel() -> Path:
    from ..kernel.fetch import fetch_debian   # the kernel area's distribution kernel
    return Path(fetch_debian().bzimage)


def _read_all() -> dict:
    """{uri: verdict} (a lab of several hosts keeps one verdict per host)."""
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if isinstance(data, dict) and "domain_type" in data:   # a one-host file of an older version
        return {data.get("uri", ""): data}
    return data if isinstance(data, dict) else {}


def _read_cache(uri: str, release: str) -> ProbeVerdict | None:
    try:
        verdict = ProbeVerdict(**{**_read_all()[uri], "cached": True})
    except (KeyError, TypeError):
        return None
    if verdict.uri != uri or verdict.host_release != release:
        return None
    if time.time() - verdict.checked_at > CACHE_MAX_AGE:
        return None
    return verdict


def _write_cache(verdict: ProbeVerdict) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    verdicts = _read_all()
    verdicts[verdict.uri] = {**asdict(verdict), "cached": False}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")   # parallel hosts write at once
    tmp.write_text(json.dumps(verdicts, indent=2) + "\n")
    tmp.replace(path)
