"""Boot lab guests under libvirt and make sure nothing outlives them.

``LibvirtDriver.boot(spec)`` is a context manager: it checks the host can give the RAM,
defines and starts the domain, hands out a ``RunningGuest`` and, whatever happens inside
the block (success, exception, timeout, Ctrl-C, SIGTERM), destroys and undefines the
domain and deletes the files the spec listed in its metadata.

Domains are *persistent* while they live (define + start) rather than transient: after
the guest powers off, a persistent domain stays visible as shut off together with the
reason (guest shutdown, destroyed by a reboot, QEMU failed), which is how the runner tells
a guest that ended from a QEMU that died. They are started with AUTODESTROY, so libvirtd
kills the guest itself if this process dies without running its cleanup (SIGKILL, OOM);
``gc`` then removes the definition and files the dead owner left.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import libvirt

from .. import paths
from ..errors import BootError, LimitError, ProvisionError
from ..units import format_size
from . import console
from .capacity import MemoryBudget, QEMU_OVERHEAD, hugepages_free, mem_available
from .host_files import HostFiles, LocalFiles, RemoteFiles
from .domain import (DOMAIN_PREFIX, METADATA_NS, METADATA_PREFIX, DomainSpec, LabMetadata,
                     domain_name, owner_metadata, process_start_time)
from .signals import deferred

log = logging.getLogger(__name__)

# libvirt prints every error to stderr unless a handler is registered; errors reach us
# as exceptions anyway, so keep the terminal clean
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from-snapshot",
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "daemon",
}
#: shut-off reasons that mean the machinery, not the guest, ended the domain. "crashed"
#: is what libvirt reports when the QEMU process dies (killed, OOM-killed, assertion): the
#: lab's domains have no pvpanic device, so a guest cannot report a crash that way; a
#: guest panic reboots (panic=-1) and on_reboot=destroy makes that "destroyed".
INFRA_END_REASONS = frozenset({"failed", "daemon", "unknown", "vanished", "saved", "migrated", "crashed"})

SCRATCH_OWNER_FILE = "owner.json"


def default_uri() -> str:
    return "qemu:///system" if os.geteuid() == 0 else "qemu:///session"


def new_run_id() -> str:
    """Sortable by time and unique across parallel orchestrators: 20261125T203600-3fa2."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


def scratch_root() -> Path:
    path = paths.lab_home() / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


class RunningGuest:
    """A started domain: wait for it, read its serial output, stop it."""

    def __init__(self, driver: "LibvirtDriver", spec: DomainSpec, domain: libvirt.virDomain,
                 placed: DomainSpec | None = None):
        self.driver = driver
        self.spec = spec                  # as the caller wrote it (paths on this machine)
        self.placed = placed or spec      # as the host runs it (HostFiles.place)
        self._domain = domain
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._ended_mono: float | None = None
        self.end_reason: str | None = None   # "shutdown", "destroyed", "failed", ...

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def console_path(self) -> Path:
        return self.spec.console_path

    @property
    def serial_path(self) -> Path | None:
        return self.spec.serial_path

    @property
    def ended(self) -> bool:
        return self._ended_mono is not None

    @property
    def guest_seconds(self) -> float:
        """Domain start to its end (or to now while it runs)."""
        end = self._ended_mono if self._ended_mono is not None else time.monotonic()
        return end - self._started_mono

    @property
    def ended_by_infra(self) -> bool:
        return self.end_reason in INFRA_END_REASONS

    def poll(self) -> bool:
        """True once the domain has ended (by itself or otherwise); records when and why."""
        if self._ended_mono is not None:
            return True
        try:
            state, reason = self._domain.state()
        except libvirt.libvirtError:
            # undefined behind our back (gc --all from another shell)
            self._mark_ended("vanished")
            return True
        if state in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_CRASHED):
            self._mark_ended(_SHUTOFF_REASONS.get(reason, f"reason-{reason}")
                             if state == libvirt.VIR_DOMAIN_SHUTOFF else "guest-crashed")
            return True
        return False

    def wait(self, timeout: float, *, cancel: threading.Event | None = None,
             interval: float = 0.2) -> bool:
        """Wait up to ``timeout`` seconds; True when the domain ended by itself.

        ``cancel`` (set by another thread) raises KeyboardInterrupt here, so that worker
        threads of a parallel run unwind through their cleanup like the main thread.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.poll():
                return True
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt("run cancelled")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(interval, remaining))

    def sync_output(self) -> None:
        """Bring the console and serial files up to date on this machine (remote hosts)."""
        try:
            self.driver.files.fetch(self.spec, self.placed)
        except Exception as exc:   # the host went away: what was fetched stays
            log.debug("fetch output of %s: %s", self.name, exc)

    def tail_console(self, lines: int = 40) -> str:
        return console.tail(self.console_path, lines)

    def console_text(self) -> str:
        return console.read_text(self.console_path)

    def serial_text(self) -> str:
        return console.read_text(self.serial_path) if self.serial_path else ""

    def rss_bytes(self) -> int | None:
        """QEMU's resident memory on the host (guest RAM touched so far + QEMU itself)."""
        try:
            rss = self._domain.memoryStats().get("rss")
        except libvirt.libvirtError:
            return None
        return None if rss is None else rss * 1024

    def destroy(self) -> None:
        """Stop the guest now (the domain stays defined until the boot block ends)."""
        try:
            if self._domain.isActive():
                self._domain.destroy()
        except libvirt.libvirtError as exc:
            log.debug("destroy %s: %s", self.name, exc)
        self.poll()

    def _mark_ended(self, reason: str) -> None:
        self._ended_mono = time.monotonic()
        self.end_reason = reason


class LibvirtDriver:
    """Provision lab guests on one libvirt connection (thread-safe; parallel runs share it)."""

    def __init__(self, uri: str | None = None, *, run_id: str | None = None, files: HostFiles | None = None,
                 display_uri: str | None = None, pool: str | None = None,
                 counter: "itertools.count | None" = None):
        self.uri = uri or default_uri()
        #: the URI as messages and records show it (no key paths)
        self.display_uri = display_uri or self.uri.split("?", 1)[0]
        self.run_id = run_id or new_run_id()
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.RLock()
        # drivers of one run on several hosts share the counter: names stay unique per run
        self._counter = counter or itertools.count(1)
        if files is None:
            from ..fleet.lab_file import DEFAULT_POOL, is_local
            files = LocalFiles() if is_local(self.uri) else RemoteFiles(lambda: self.conn, pool or DEFAULT_POOL)
        self.files: HostFiles = files
        #: why ``alive()`` last said no
        self.last_error: str | None = None

    @property
    def remote(self) -> bool:
        return self.files.remote

    # --- connection -------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise ProvisionError(
                        f"cannot connect to libvirt at {self.display_uri}: {exc.get_error_message()}",
                        hint="start the daemons with `bash scripts/setup` (virtlogd -d; libvirtd -d)") from exc
            return self._conn

    def alive(self) -> bool:
        """The connection works now (a host that went away answers no more calls)."""
        with self._lock:
            if self._conn is None:
                return True
            try:
                if self._conn.isAlive() and self._conn.getLibVersion() > 0:
                    return True
                self.last_error = "the connection is closed"
            except libvirt.libvirtError as exc:
                self.last_error = (exc.get_error_message() or str(exc)).strip().splitlines()[0][:200]
            return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def __enter__(self) -> "LibvirtDriver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def domain_types(self) -> set[str]:
        """Domain types libvirt offers for x86_64 guests here (e.g. {'qemu', 'kvm'})."""
        caps = ET.fromstring(self.conn.getCapabilities())
        types = set()
        for guest in caps.findall("guest"):
            arch = guest.find("arch")
            if arch is not None and arch.get("name") == "x86_64":
                types.update(d.get("type") for d in arch.findall("domain"))
        return types

    def probe_domain_type(self, *, kernel: Path | None = None, force: bool = False) -> str:
        """'kvm' only when a KVM guest really boots here, else 'qemu' (cached per host)."""
        from .probe import probe_domain_type
        return probe_domain_type(self, kernel=kernel, force=force).domain_type

    # --- names and scratch space --------------------------------------------------------

    def new_name(self) -> str:
        return domain_name(self.run_id, next(self._counter))

    def scratch_dir(self) -> Path:
        """Per-run scratch space (initrd copies, overlays) that gc removes once the owner died."""
        path = scratch_root() / self.run_id
        with self._lock:   # parallel scenarios ask for it at the same time
            if not (path / SCRATCH_OWNER_FILE).exists():
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o755)   # the qemu user reads the per-run initrd from here
                pid = os.getpid()
                (path / SCRATCH_OWNER_FILE).write_text(json.dumps(
                    {"pid": pid, "start": process_start_time(pid), "created": time.time()}))
        return path

    def remove_scratch(self) -> None:
        shutil.rmtree(scratch_root() / self.run_id, ignore_errors=True)

    # --- capacity ------------------------------------------------------------------------

    def memory_budget(self) -> MemoryBudget:
        return MemoryBudget(available=self.available_memory(), promised=self._promised_memory())

    def available_memory(self) -> int:
        """MemAvailable of the host: /proc/meminfo here, libvirt's node statistics on a remote host
        (free + buffers + page cache, which is what MemAvailable approximates)."""
        if not self.remote:
            return mem_available()
        try:
            stats = self.conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
        except libvirt.libvirtError as exc:
            raise ProvisionError(f"{self.display_uri}: libvirt gives no memory statistics: "
                                 f"{exc.get_error_message()}") from exc
        return sum(stats.get(key, 0) for key in ("free", "buffers", "cached")) * 1024

    def _promised_memory(self) -> int:
        """RAM that running lab guests were given but have not touched yet."""
        total = 0
        for dom in self._lab_domains(active_only=True):
            try:
                max_kib = dom.info()[1]
                rss_kib = dom.memoryStats().get("rss", 0)
            except libvirt.libvirtError:
                continue
            total += max(0, max_kib - rss_kib) * 1024 + QEMU_OVERHEAD
        return total

    def check_capacity(self, spec: DomainSpec) -> None:
        budget = self.memory_budget()
        if not budget.fits(spec.memory):
            raise LimitError(f"the host cannot give guest {spec.name} its RAM: {budget.describe(spec.memory)}",
                             hint="lower the guest's ram, run fewer scenarios in parallel, or free host memory")
        if spec.hugepage_backing and not self.remote:
            # (a remote host's huge pages are libvirt's to refuse: its error names them)
            free, size = hugepages_free()
            if free * size < spec.memory:
                need = -(-spec.memory // size)
                raise LimitError(
                    f"guest {spec.name} wants {format_size(spec.memory)} of host huge pages, "
                    f"{free} x {format_size(size)} are free",
                    hint=f"echo {need} > /proc/sys/vm/nr_hugepages (or drop hugepage_backing)")

    # --- boot ----------------------------------------------------------------------------

    def own_active_guests(self) -> list[str]:
        """Names of this driver's (this run's) guests that are running now."""
        prefix = f"{DOMAIN_PREFIX}{self.run_id}-"
        return [d.name() for d in self._lab_domains(active_only=True) if d.name().startswith(prefix)]

    @contextmanager
    def boot(self, spec: DomainSpec, *, wait_for_memory: bool = False,
             cancel: threading.Event | None = None) -> Iterator[RunningGuest]:
        """Start ``spec``; on leaving the block the domain and its files are gone.

        ``wait_for_memory``: when the RAM is not free now but guests of this run hold
        it, wait for them to end instead of failing (parallel matrix runs).
        """
        if spec.metadata is None:
            spec = replace(spec, metadata=owner_metadata(self.run_id))
        for path in (spec.console_path, spec.serial_path):
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                console.remove_all(path)   # never read a previous run's output
        placed = spec
        guest = None
        try:
            # the host's view of the spec: artifacts cached there, output files it can write
            placed = self.files.place(spec, self.scratch_dir(), self.run_id)
            domain = self._start_when_it_fits(placed, wait_for_memory, cancel)
            guest = RunningGuest(self, spec, domain, placed)
            log.debug("started %s (%s, %s RAM)", spec.name, spec.domain_type, format_size(spec.memory))
            yield guest
        finally:
            with deferred():
                if guest is not None:
                    guest.sync_output()   # the last lines, before teardown deletes the host's copy
                self.teardown(placed.name, placed.metadata.files if placed.metadata else ())

    def _start_when_it_fits(self, spec: DomainSpec, wait: bool,
                            cancel: threading.Event | None) -> libvirt.virDomain:
        while True:
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt("run cancelled")
            with self._lock:   # capacity check and start are one step for parallel runs
                try:
                    self.check_capacity(spec)
                except LimitError:
                    if not (wait and self.own_active_guests()):
                        raise
                else:
                    with deferred():
                        return self._start(spec)
            time.sleep(1.0)

    def _start(self, spec: DomainSpec) -> libvirt.virDomain:
        try:
            domain = self.conn.defineXML(spec.to_xml())
        except libvirt.libvirtError as exc:
            raise ProvisionError(f"libvirt refused the definition of {spec.name}: {exc.get_error_message()}") \
                from exc
        try:
            # AUTODESTROY: libvirtd kills the guest if this process dies without cleaning up
            domain.createWithFlags(libvirt.VIR_DOMAIN_START_AUTODESTROY)
        except libvirt.libvirtError as exc:
            raise BootError(f"could not start {spec.name}: {exc.get_error_message()}",
                            hint=f"QEMU's log: {self.qemu_log_path(spec.name)}") from exc
        return domain

    def qemu_log_path(self, name: str) -> Path:
        # (on a remote host the same path, on that host)
        if self.uri.split("?", 1)[0].endswith("/system"):
            return Path("/var/log/libvirt/qemu") / f"{name}.log"
        return Path.home() / ".cache/libvirt/qemu/log" / f"{name}.log"

    def teardown(self, name: str, files: tuple[Path, ...] = ()) -> None:
        """Destroy and undefine ``name`` if it exists and delete ``files``; never raises."""
        try:
            domain = self.conn.lookupByName(name)
        except libvirt.libvirtError:
            domain = None   # already gone (or never defined)
        except ProvisionError as exc:
            log.warning("cannot reach libvirt to remove %s: %s", name, exc)
            domain = None
        if domain is not None:
            try:
                if domain.isActive():
                    domain.destroy()
            except libvirt.libvirtError as exc:
                log.debug("destroy %s: %s", name, exc)   # it powered off meanwhile
            try:
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except libvirt.libvirtError as exc:
                if _domain_exists(self.conn, name):
                    log.warning("could not undefine %s: %s", name, exc.get_error_message())
        try:
            self.files.remove(tuple(Path(p) for p in files))
        except Exception as exc:   # a host that went away keeps them until gc --lab
            log.warning("could not remove %d file(s) of %s on %s: %s", len(files), name, self.display_uri, exc)

    # --- inventory (gc and doctor use it) -----------------------------------------------

    def _lab_domains(self, *, active_only: bool = False) -> list[libvirt.virDomain]:
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE if active_only else 0
        try:
            domains = self.conn.listAllDomains(flags)
        except libvirt.libvirtError as exc:
            raise ProvisionError(f"libvirt cannot list domains: {exc.get_error_message()}") from exc
        return [d for d in domains if d.name().startswith(DOMAIN_PREFIX)]

    def lab_domains(self) -> list[tuple[str, LabMetadata | None, bool]]:
        """(name, metadata or None, active) of every lab domain on this connection."""
        result = []
        for dom in self._lab_domains():
            try:
                text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
                meta = LabMetadata.from_xml(text)
            except (libvirt.libvirtError, ET.ParseError, ValueError):
                meta = None
            try:
                active = bool(dom.isActive())
            except libvirt.libvirtError:
                continue
            result.append((dom.name(), meta, active))
        return result


def _domain_exists(conn: libvirt.virConnect, name: str) -> bool:
    try:
        conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def _remove_path(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not remove %s: %s", path, exc)


__all__ = ["LibvirtDriver", "RunningGuest", "default_uri", "new_run_id", "INFRA_END_REASONS",
           "METADATA_PREFIX"]
