"""A host of the lab: one libvirt daemon, what the lab may use of it, and whether it is up.

``Host`` is the runner's view of a machine (a small interface, as labgrid's drivers):
``driver`` boots guests there (``guest.libvirt_driver``; a remote host's files travel
through its storage pool, ``guest.host_files``), ``capacity`` says how much guest RAM and
how many vCPUs the lab may use there, ``record`` says what the machine is (for every run
record) and ``mark_down`` takes it out of placement when it fails mid-run.

Capacity is asked from libvirt when the run starts: the host's available memory minus
what running lab guests (of any run) may still take, minus a margin, capped by the lab
file's ``ram``. vCPUs are the lab file's ``vcpus``, else twice the host's CPUs: vCPUs are
time-shared and may be overcommitted that far; RAM never is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import InfraError, ProvisionError
from ..guest.capacity import QEMU_OVERHEAD
from ..guest.libvirt_driver import LibvirtDriver
from ..units import format_size
from .host_record import HostRecord, accelerator_of
from .lab_file import HostSpec

log = logging.getLogger(__name__)

#: vCPUs per host CPU the lab may run when the lab file sets no limit
VCPU_OVERCOMMIT = 2


@dataclass(frozen=True)
class Capacity:
    ram: int               # guest RAM the lab may place there (bytes, QEMU overhead included)
    vcpus: int
    detail: str            # how it was worked out, for messages

    def fits(self, memory: int, vcpus: int) -> bool:
        return memory + QEMU_OVERHEAD <= self.ram and vcpus <= self.vcpus


@dataclass(frozen=True)
class HostDown:
    at: float              # unix time it was marked down
    reason: str


class Host:
    def __init__(self, spec: HostSpec, *, run_id: str, parallel: int = 1, counter=None,
                 driver: LibvirtDriver | None = None):
        self.spec = spec
        self.name = spec.name
        self.parallel = spec.parallel or parallel
        self.down: HostDown | None = None
        self._record: HostRecord | None = None
        self._capacity: Capacity | None = None
        self._lock = threading.Lock()
        if driver is not None:   # a caller's own driver (the pytest plugin, bisect, tests)
            self.driver = driver
            return
        if spec.local:
            uri = spec.uri
        else:
            from .ssh_transport import connect_uri
            uri = connect_uri(spec.uri, self.transport(), self.workdir())
        from .ssh_transport import public_uri
        self.driver = LibvirtDriver(uri, run_id=run_id, display_uri=public_uri(spec.uri), pool=spec.pool,
                                    counter=counter)

    def __repr__(self) -> str:
        return f"Host({self.name}, {self.driver.display_uri})"

    @property
    def remote(self) -> bool:
        return not self.spec.local

    def transport(self):
        from ..image.keys import lab_key
        from .ssh_transport import SshTransport
        return SshTransport(key=self.spec.ssh_key or lab_key().private, known_hosts=self.spec.known_hosts)

    def workdir(self) -> Path:
        """This machine's files about the host (the ssh wrapper libvirt runs)."""
        digest = hashlib.sha256(self.spec.uri.encode()).hexdigest()[:12]
        path = paths.lab_home() / "hosts" / f"{self.name}-{digest}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # --- what the machine is ---------------------------------------------------------

    def record(self) -> HostRecord:
        """URI, CPU model, KVM or TCG, host kernel, hostname (asked once per run)."""
        with self._lock:
            if self._record is None:
                self._record = self._ask_record()
            return self._record

    def _ask_record(self) -> HostRecord:
        return describe(self.driver, self.name, kernel=self.host_kernel)

    def host_kernel(self) -> str:
        if not self.remote:
            return os.uname().release
        from .ssh_transport import run_on_host
        return run_on_host(self.spec.uri, self.transport(), ["uname", "-r"], timeout=30).strip()

    # --- how much the lab may use -----------------------------------------------------

    def capacity(self, *, refresh: bool = False) -> Capacity:
        with self._lock:
            if self._capacity is None or refresh:
                self._capacity = self._ask_capacity()
            return self._capacity

    def _ask_capacity(self) -> Capacity:
        import libvirt
        budget = self.driver.memory_budget()
        ram = budget.free_for_guests
        detail = (f"{format_size(budget.available)} available, {format_size(budget.promised)} promised to "
                  f"running lab guests, {format_size(budget.margin)} kept for the host")
        if self.spec.ram is not None and self.spec.ram < ram:
            ram = self.spec.ram
            detail = f"lab file limit {format_size(self.spec.ram)} ({detail})"
        try:
            cpus = self.driver.conn.getInfo()[2]
        except libvirt.libvirtError as exc:
            raise ProvisionError(f"host {self.name}: {exc.get_error_message()}") from exc
        vcpus = self.spec.vcpus or cpus * VCPU_OVERCOMMIT
        return Capacity(ram=ram, vcpus=vcpus, detail=f"{detail}; {vcpus} vCPUs")

    # --- faults ----------------------------------------------------------------------

    def alive(self) -> bool:
        return self.down is None and self.driver.alive()

    def mark_down(self, reason: str) -> HostDown:
        with self._lock:
            if self.down is None:
                self.down = HostDown(at=time.time(), reason=reason)
                log.warning("host %s is down: %s", self.name, reason)
            return self.down

    def check(self) -> None:
        """Raise InfraError unless the host answers (used before placing on it)."""
        if self.down is not None:
            raise InfraError(f"host {self.name} is down since {time.strftime('%H:%M:%S', time.localtime(self.down.at))}: "
                             f"{self.down.reason}")
        self.driver.conn   # connects, or raises ProvisionError

    def close(self) -> None:
        self.driver.remove_scratch()
        self.driver.close()


_described: dict[str, HostRecord] = {}


def describe(driver: LibvirtDriver, name: str, *, kernel=None) -> HostRecord:
    """What the driver's host is: CPU model and hostname from libvirt, KVM or TCG from the
    probe, the kernel release (``kernel()``; this machine's for a local driver)."""
    import libvirt
    key = f"{name} {driver.uri}"
    if key in _described:
        return _described[key]
    conn = driver.conn
    try:
        caps = ET.fromstring(conn.getCapabilities())
        hostname = conn.getHostname()
    except libvirt.libvirtError as exc:
        raise ProvisionError(f"host {name}: libvirt gives no capabilities: {exc.get_error_message()}") from exc
    model = caps.findtext("host/cpu/model") or caps.findtext("host/cpu/arch") or "unknown"
    release = kernel() if kernel is not None else os.uname().release
    record = HostRecord(name=name, uri=driver.display_uri, cpu_model=model,
                        accelerator=accelerator_of(driver.probe_domain_type()), kernel=release,
                        hostname=hostname)
    _described[key] = record
    return record


def hosts_for(lab, *, run_id: str, parallel: int) -> list[Host]:
    """One Host per lab file entry, all sharing the run id (domain names stay unique)."""
    import itertools
    counter = itertools.count(1)   # one name sequence: two hosts may be one libvirtd
    return [Host(spec, run_id=run_id, parallel=parallel, counter=counter) for spec in lab.hosts]
