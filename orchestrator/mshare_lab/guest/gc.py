"""Sweep what dead runs left behind: lab domains, their files, per-run scratch dirs.

A run cleans up after itself on every way out Python sees (``boot`` is a context
manager). What it cannot cover is its own SIGKILL or a host crash: libvirtd then kills
the guest (AUTODESTROY) but the definition, the per-run initrd and the overlays stay.
Every lab domain names its owner (pid + process start time, so a reused pid does not look
alive) in its metadata; ``gc`` removes the ones whose owner is gone.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .domain import LabMetadata, owner_alive
from .libvirt_driver import SCRATCH_OWNER_FILE, LibvirtDriver, scratch_root

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    domains: list[str] = field(default_factory=list)        # removed
    files: list[Path] = field(default_factory=list)         # removed with them
    scratch_dirs: list[Path] = field(default_factory=list)  # removed
    kept: list[str] = field(default_factory=list)           # domains of live owners
    volumes: list[str] = field(default_factory=list)        # per-run (or cache) volumes removed

    def summary(self) -> str:
        return (f"removed {len(self.domains)} domain(s), {len(self.files)} file(s), "
                f"{len(self.scratch_dirs)} scratch dir(s); kept {len(self.kept)} domain(s) of running owners")


def gc(uri: str | None = None, *, everything: bool = False, driver: LibvirtDriver | None = None) -> GcReport:
    """Remove leftovers of dead runs (``everything``: of every run, alive or not)."""
    own = driver is None
    driver = driver or LibvirtDriver(uri)
    report = GcReport()
    try:
        for name, meta, _active in driver.lab_domains():
            if not everything and (meta is None or owner_alive(meta)):
                # a lab-named domain without our metadata was not made by this lab version:
                # only --all touches it
                report.kept.append(name)
                continue
            files = meta.files if meta else ()
            driver.teardown(name, files)
            report.domains.append(name)
            report.files.extend(files)
        report.scratch_dirs = _sweep_scratch(everything=everything, keep=driver.run_id)
        report.files.extend(_sweep_unstored_runs([p.name for p in report.scratch_dirs]))
    finally:
        if own:
            driver.close()
    return report


#: a per-run volume's name: the run's domain prefix (``mshare-lab-<run id>-``), then the rest
_RUN_VOLUME = re.compile(r"^mshare-lab-(\d{8}T\d{6}-[0-9a-f]+)-")


def sweep_volumes(volumes, *, live_runs: set[str], everything: bool = False, cache: bool = False) -> list[str]:
    """Delete the per-run volumes of dead runs in a host's pool (``fleet.volumes.HostVolumes``);
    the names removed. A run is dead when no domain of it is left on the host (``live_runs``)
    and its scratch dir on this machine has no live owner: a run uploads its files before it
    defines the domain, and the scratch dir exists from its first guest on. ``everything``:
    every run's volumes; with ``cache`` also the content-addressed cache (which otherwise stays:
    it is what makes a second run upload nothing)."""
    from ..fleet.volumes import CACHE_NAME
    names = [name for name, _size in volumes.list_volumes()]
    removed: list[str] = []
    runs = sorted({m.group(1) for m in map(_RUN_VOLUME.match, names) if m})
    for run_id in runs:
        if not everything and (run_id in live_runs or _scratch_owner_alive(scratch_root() / run_id)):
            continue
        prefix = f"mshare-lab-{run_id}-"
        gone = [n for n in names if n.startswith(prefix)]
        volumes.delete_run_volumes(prefix)
        removed += gone
    if everything and cache:
        for name in names:
            if CACHE_NAME.match(name):
                volumes.ensure_pool().storageVolLookupByName(name).delete(0)
                removed.append(name)
    return removed


def gc_host(host, *, everything: bool = False, cache: bool = False) -> GcReport:
    """``gc`` on one host of a lab (``fleet.host.Host``): its dead runs' domains (their
    files go through the host's HostFiles: volumes on a remote host), then the per-run
    volumes of dead runs in its pool. Raises ProvisionError when the host is unreachable."""
    report = gc(driver=host.driver, everything=everything)
    if host.remote:
        from ..guest.host_files import pool_name_for
        from ..fleet.volumes import HostVolumes
        # every domain left on the host (kept: a live owner, or not ours to judge) keeps its run's volumes
        live = {m.group(1) for name, _meta, _active in host.driver.lab_domains() if (m := _RUN_VOLUME.match(name))}
        volumes = HostVolumes(host.driver.conn, host.spec.pool, pool_name_for(host.spec.pool))
        if _pool_defined(host.driver.conn, volumes.pool_name):
            report.volumes = sweep_volumes(volumes, live_runs=live, everything=everything, cache=cache)
    return report


def _pool_defined(conn, name: str) -> bool:
    """A host without the pool has no volumes to sweep (and gc must not create it)."""
    import libvirt
    try:
        conn.storagePoolLookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def _sweep_scratch(*, everything: bool, keep: str) -> list[Path]:
    removed = []
    for path in sorted(scratch_root().iterdir()):
        if not path.is_dir() or path.name == keep:
            continue
        if everything or not _scratch_owner_alive(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _sweep_unstored_runs(dead_run_ids: list[str]) -> list[Path]:
    """Run directories of scenarios a killed matrix run never stored (their console and
    serial logs); the directories of stored runs (marked, or kept as record.json) stay."""
    from .. import paths
    from ..lab.runner import STORED_MARK
    from ..results.record_file import RECORD_FILE
    removed = []
    for run_id in dead_run_ids:
        root = paths.runs_dir() / run_id
        if not root.is_dir():
            continue
        for workdir in sorted(root.iterdir()):
            if workdir.is_dir() and not (workdir / STORED_MARK).exists() and not (workdir / RECORD_FILE).exists():
                shutil.rmtree(workdir, ignore_errors=True)
                removed.append(workdir)
        try:
            root.rmdir()
        except OSError:
            pass
    return removed


def _scratch_owner_alive(path: Path) -> bool:
    try:
        data = json.loads((path / SCRATCH_OWNER_FILE).read_text())
        meta = LabMetadata(run_id=path.name, owner_pid=int(data["pid"]), owner_start=str(data.get("start", "")))
    except (OSError, ValueError, KeyError, TypeError):
        # no readable owner file: either being created this instant (the owner writes it
        # right after mkdir) or left by a crash; only an old one is treated as dead
        try:
            return time.time() - path.stat().st_mtime < 600
        except OSError:
            return False
    return owner_alive(meta)
