"""``mshare-lab doctor --lab FILE``: is every host of the lab ready? One check per line.

Per host, through its libvirt connection only (a remote host's paths are never read):
reachable, KVM or TCG (the probe's cached verdict; ``reprobe`` boots the probe there),
free RAM, what the lab may use there (``Host.capacity``), the disk of its storage pool and
the cache in it, what the machine is (``Host.record``: CPU model, kernel), and leftovers of
dead runs. An unreachable host is one failed check saying what to do; the other hosts are
checked all the same.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable

from .. import paths
from ..errors import LabError
from ..guest.doctor import Check
from ..units import format_size
from .host import Host

#: below this a host can start hardly any guest (a micro guest wants 256 MiB + QEMU)
RAM_LOW = 1 << 30

Report = Callable[[Check], None]


def _name(host: Host, what: str) -> str:
    return f"{host.name} {what}"


def check_reachable(host: Host, lab_path: Path | None) -> Check:
    import libvirt
    try:
        conn = host.driver.conn
        version = conn.getVersion()
        types = sorted(host.driver.domain_types())
    except LabError as exc:
        return Check(_name(host, "libvirt"), False, f"unreachable: {exc.message}", _reach_fix(host, lab_path))
    except libvirt.libvirtError as exc:   # a connection that dies while we ask
        return Check(_name(host, "libvirt"), False, f"unreachable: {exc}", _reach_fix(host, lab_path))
    if "qemu" not in types:
        return Check(_name(host, "libvirt"), False, f"{host.driver.display_uri} offers no qemu domain type",
                     _prepare_hint(lab_path))
    major, minor = version // 1_000_000, version // 1000 % 1000
    return Check(_name(host, "libvirt"), True,
                 f"{host.driver.display_uri} reachable, QEMU {major}.{minor}, domain types {', '.join(types)}")


def _prepare_hint(lab_path: Path | None) -> str:
    return f"`mshare-lab lab prepare{f' --lab {lab_path}' if lab_path else ''}` installs and starts libvirt"


def _reach_fix(host: Host, lab_path: Path | None) -> str:
    if host.remote:
        return (f"check that {host.name} is up and its sshd answers, that its ssh_key is in the host's "
                f"authorized_keys and its host key in known_hosts; then {_prepare_hint(lab_path)}")
    return "start the daemons: `virtlogd -d; libvirtd -d` (scripts/setup does it)"


def verdict_of(host: Host, reprobe: bool, kernel: Path | None = None):
    """The probe's verdict for the host: cached, or probed now with ``reprobe``; None when
    there is no cached one (probing boots a guest: only on request)."""
    from ..guest import probe
    if reprobe:
        return probe.probe_domain_type(host.driver, kernel=kernel, force=True)
    # (the cache is keyed by the driver's URI and this machine's kernel, as probe writes it)
    return probe._read_cache(host.driver.display_uri, os.uname().release)


def check_accelerator(host: Host, verdict, lab_path: Path | None) -> Check:
    name = _name(host, "accelerator")
    again = f"mshare-lab doctor{f' --lab {lab_path}' if lab_path else ''} --reprobe"
    if verdict is None:
        offered = "kvm" in host.driver.domain_types()
        return Check(name, False, f"not probed yet (libvirt {'offers' if offered else 'does not offer'} kvm); "
                     "runs probe on first use", f"`{again}` boots the probe now", required=False)
    age = "probed now" if not verdict.cached else f"cached {_age(verdict.checked_at)} ago"
    if verdict.domain_type == "kvm":
        return Check(name, True, f"kvm ({age})", required=False)
    return Check(name, False, f"tcg, about 10x slower ({verdict.reason}; {age})",
                 f"fine for CI-sized scenarios; `{again}` after fixing KVM", required=False)


def _age(at: float) -> str:
    seconds = max(0.0, time.time() - at)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def check_ram(host: Host) -> Check:
    free = host.driver.available_memory()
    ok = free >= RAM_LOW
    return Check(_name(host, "ram"), ok, f"{format_size(free)} free",
                 "stop other guests there or give the lab another host", required=False)


def check_capacity(host: Host) -> Check:
    capacity = host.capacity(refresh=True)
    cpus = host.driver.conn.getInfo()[2]
    detail = (f"the lab may use {format_size(capacity.ram)} and {capacity.vcpus} vCPUs "
              f"({cpus} host CPUs; {capacity.detail.rsplit('; ', 1)[0]})")
    return Check(_name(host, "capacity"), capacity.ram > 0, detail,
                 "free RAM there or raise its 'ram' in the lab file", required=False)


def check_disk(host: Host, lab_path: Path | None) -> Check:
    """A remote host: its pool's capacity and free bytes as libvirt reports them and the
    artifact cache in it. The local host keeps its files in the lab home."""
    import shutil

    import libvirt
    name = _name(host, "disk")
    if not host.remote:
        home = paths.lab_home()
        usage = shutil.disk_usage(home)
        return Check(name, True, f"{format_size(usage.free)} free of {format_size(usage.total)} under {home} "
                     "(a local host uses the lab's own files)")
    from ..guest.host_files import pool_name_for
    from .volumes import HostVolumes
    pool_name = pool_name_for(host.spec.pool)
    try:
        pool = host.driver.conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError:
        return Check(name, False, f"no pool yet at {host.spec.pool}", _prepare_hint(lab_path), required=False)
    try:
        if not pool.isActive():
            return Check(name, False, f"pool {pool_name} at {host.spec.pool} is not started",
                         _prepare_hint(lab_path), required=False)
        _state, capacity, _allocation, available = pool.info()
        cache = HostVolumes(host.driver.conn, host.spec.pool, pool_name).cache_bytes()
    except (libvirt.libvirtError, LabError) as exc:
        return Check(name, False, f"pool {pool_name}: {exc}", _prepare_hint(lab_path), required=False)
    return Check(name, True, f"{format_size(available)} free of {format_size(capacity)} in pool {pool_name} "
                 f"({host.spec.pool}); cache {format_size(cache)}")


def check_machine(host: Host, verdict) -> Check:
    """CPU model and kernel: from ``Host.record`` when the accelerator is known (the record
    carries it); without a verdict the record would boot a probe, so the same facts are
    read from libvirt's capabilities and ``Host.host_kernel``."""
    name = _name(host, "machine")
    try:
        if verdict is not None:
            record = host.record()
            return Check(name, True, f"CPU {record.cpu_model}, Linux {record.kernel}, hostname {record.hostname}, "
                         f"{record.accelerator}")
        caps = ET.fromstring(host.driver.conn.getCapabilities())
        model = caps.findtext("host/cpu/model") or caps.findtext("host/cpu/arch") or "unknown"
        return Check(name, True, f"CPU {model}, Linux {host.host_kernel()}, hostname {host.driver.conn.getHostname()}")
    except LabError as exc:
        return Check(name, False, str(exc), "see the libvirt check", required=False)


def check_leftovers(host: Host, lab_path: Path | None) -> Check:
    from ..guest.domain import owner_alive
    name = _name(host, "leftovers")
    domains = host.driver.lab_domains()
    dead = [n for n, meta, _ in domains if meta is None or not owner_alive(meta)]
    if dead:
        return Check(name, False, f"{len(dead)} domain(s) of dead runs: {', '.join(dead[:3])}",
                     f"mshare-lab gc{f' --lab {lab_path}' if lab_path else ''}", required=False)
    return Check(name, True, f"{len(domains)} lab domain(s), all of running owners", required=False)


def host_checks(host: Host, *, reprobe: bool = False, kernel: Path | None = None,
                lab_path: Path | None = None, report: Report | None = None) -> list[Check]:
    """Every check of one host; after a failed libvirt check only that one (the rest would
    repeat its error)."""
    results: list[Check] = []

    def emit(check: Check) -> None:
        results.append(check)
        if report:
            report(check)

    reach = check_reachable(host, lab_path)
    emit(reach)
    if not reach.ok:
        return results
    try:
        verdict = verdict_of(host, reprobe, kernel)
    except LabError:
        verdict = None
    steps: list[Callable[[], Check]] = [
        lambda: check_accelerator(host, verdict, lab_path), lambda: check_ram(host), lambda: check_capacity(host),
        lambda: check_disk(host, lab_path), lambda: check_machine(host, verdict),
        lambda: check_leftovers(host, lab_path),
    ]
    for step in steps:
        try:
            emit(step())
        except Exception as exc:   # (libvirtError) the host went away mid-check: say so, check the next
            emit(Check(_name(host, "libvirt"), False, f"lost while checking: {exc}", _reach_fix(host, lab_path)))
            break
    return results


def lab_checks(lab, *, reprobe: bool = False, report: Report | None = None,
               header: Callable[[str], None] | None = None) -> list[Check]:
    """The checks of every host of ``lab`` (a LabFile), one host after the other."""
    from ..guest.libvirt_driver import new_run_id
    run_id = new_run_id()
    results: list[Check] = []
    for spec in lab.hosts:
        host = Host(spec, run_id=run_id)
        if header:
            header(f"host {spec.name} ({host.driver.display_uri})")
        try:
            results += host_checks(host, reprobe=reprobe, lab_path=lab.path, report=report)
        finally:
            host.close()
    return results
