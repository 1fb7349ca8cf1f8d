"""How a guest's files reach the host that runs it, and how its output comes back.

A ``DomainSpec`` is written with paths on *this* machine: the kernel artifact, the micro
base initramfs (plus the scenario's few hundred bytes, ``initrd_tail``), the console and
serial files in the run's directory. ``HostFiles.place`` turns it into the spec the host
runs:

* ``LocalFiles`` (the host is this machine): paths stay; the scenario initrd is written
  into the run's scratch dir.
* ``RemoteFiles`` (a ``qemu+ssh://`` host): artifacts go through libvirt's own remote
  protocol into the host's storage pool, content-addressed, so each crosses the network
  once per host (``fleet.volumes``); the scenario initrd is composed on the host from the
  cached base plus the tail, so only the tail travels; the console and serial files are
  written into the pool and downloaded as they grow (``fetch``).

What ``place`` created on the host is listed in the domain's metadata, so teardown and a
later ``gc`` remove exactly that and leave only the cache.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..errors import ConfigError
from .domain import DomainSpec, owner_metadata

if TYPE_CHECKING:
    import libvirt

log = logging.getLogger(__name__)


class HostFiles(Protocol):
    """What a driver needs to put a guest's files on its host and get its output back."""

    remote: bool
    counters: object | None      # uploads and cache hits (remote hosts), None where nothing travels

    def reconnected(self) -> None: ...

    def place(self, spec: DomainSpec, scratch: Path, run_id: str) -> DomainSpec: ...

    def fetch(self, spec: DomainSpec, placed: DomainSpec) -> None: ...

    def remove(self, paths: tuple[Path, ...]) -> None: ...


class LocalFiles:
    """The host is this machine: the guest reads and writes the lab's own files."""

    remote = False
    counters = None          # nothing crosses a network

    def reconnected(self) -> None:
        pass

    def place(self, spec: DomainSpec, scratch: Path, run_id: str) -> DomainSpec:
        if not spec.initrd_tail:
            return spec
        initrd = scratch / f"{spec.name}.initrd.gz"
        write_joined(Path(spec.initrd), spec.initrd_tail, initrd)
        return _with_files(dataclasses.replace(spec, initrd=initrd, initrd_tail=b""), (initrd,), run_id)

    def fetch(self, spec: DomainSpec, placed: DomainSpec) -> None:
        pass   # the guest wrote the lab's own files

    def remove(self, paths: tuple[Path, ...]) -> None:
        from .libvirt_driver import _remove_path
        for path in paths:
            _remove_path(Path(path))


class RemoteFiles:
    """The host is another machine, reached only through libvirt (storage pool volumes)."""

    remote = True

    def __init__(self, conn_getter, pool_path: str, pool_name: str | None = None):
        self._conn_getter = conn_getter
        self.pool_path = pool_path
        self.pool_name = pool_name or pool_name_for(pool_path)
        self._volumes = None
        self._lock = threading.Lock()

    @property
    def volumes(self):
        """The host's ``fleet.volumes.HostVolumes`` (the pool is made on first use)."""
        with self._lock:
            if self._volumes is None:
                from ..fleet.volumes import HostVolumes
                volumes = HostVolumes(self._conn_getter(), self.pool_path, self.pool_name)
                volumes.ensure_pool()
                self._volumes = volumes
            return self._volumes

    @property
    def counters(self):
        """Uploads and cache hits so far (``fleet.volumes.VolumeCounters``), None before any."""
        return self._volumes.counters if self._volumes is not None else None

    def reconnected(self) -> None:
        """The driver opened a new connection: the pool handle of the old one is dead."""
        with self._lock:
            self._volumes = None

    def place(self, spec: DomainSpec, scratch: Path, run_id: str) -> DomainSpec:
        if spec.disks:
            # a Debian guest's overlay is written by the guest: not a cacheable artifact
            raise ConfigError(f"{spec.name}: disk images cannot be placed on a remote host yet",
                              hint="run image: debian scenarios on a local host (docs/lab.md)")
        volumes = self.volumes
        created: list[Path] = []
        kernel = Path(volumes.cached(Path(spec.kernel)))
        initrd = spec.initrd
        if initrd is not None and spec.initrd_tail:
            initrd = Path(volumes.compose(Path(initrd), spec.initrd_tail, f"{spec.name}.initrd.gz"))
            created.append(initrd)
        elif initrd is not None:
            initrd = Path(volumes.cached(Path(initrd)))
        console = Path(volumes.run_volume_path(f"{spec.name}-console.log"))
        created.append(console)
        serial = None
        if spec.serial_path is not None:
            serial = Path(volumes.run_volume_path(f"{spec.name}-serial.log"))
            created.append(serial)
        placed = dataclasses.replace(spec, kernel=kernel, initrd=initrd, initrd_tail=b"",
                                     console_path=console, serial_path=serial)
        return _with_files(placed, tuple(created), run_id)

    def fetch(self, spec: DomainSpec, placed: DomainSpec) -> None:
        """Append what the guest wrote since the last call to the local console/serial files."""
        pairs = [(spec.console_path, placed.console_path), (spec.serial_path, placed.serial_path)]
        names = {name for name, _size in self.volumes.list_volumes()}
        for local, remote in pairs:
            if local is None or remote is None:
                continue
            base = Path(remote).name
            # virtlogd rotates a full file to <name>.0, <name>.1, ...: the same parts locally
            for name in sorted(n for n in names if n == base or n.startswith(base + ".")):
                target = Path(local).with_name(Path(local).name + name[len(base):])
                self.volumes.download_new(name, target)

    def remove(self, paths: tuple[Path, ...]) -> None:
        for path in paths:
            self.remove_volume(Path(path))

    def remove_volume(self, path: Path) -> None:
        import libvirt
        conn = self._conn_getter()
        names = {path.name} | {n for n, _ in self._safe_list() if n.startswith(path.name + ".")}
        for name in names:
            try:
                conn.storageVolLookupByPath(str(path.with_name(name))).delete(0)
            except libvirt.libvirtError as exc:
                log.debug("remove %s on the host: %s", path.with_name(name), exc)

    def _safe_list(self) -> list[tuple[str, int]]:
        try:
            return self.volumes.list_volumes()
        except Exception as exc:   # the host went away: nothing to list
            log.debug("list volumes: %s", exc)
            return []


def pool_name_for(path: str) -> str:
    """The libvirt pool name of a cache directory: one pool per directory on a host."""
    from ..fleet.lab_file import DEFAULT_POOL
    if path.rstrip("/") == DEFAULT_POOL:
        return "mshare-lab"
    import hashlib
    return "mshare-lab-" + hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:8]


def _with_files(spec: DomainSpec, files: tuple[Path, ...], run_id: str) -> DomainSpec:
    meta = spec.metadata or owner_metadata(run_id)
    return dataclasses.replace(spec, metadata=dataclasses.replace(meta, files=tuple(meta.files) + files))


def write_joined(base: Path, tail: bytes, out: Path) -> Path:
    """``base`` + ``tail`` into ``out`` (atomically: the guest never reads half a file)."""
    import shutil
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with part.open("wb") as dst, base.open("rb") as src:
        shutil.copyfileobj(src, dst)
        dst.write(tail)
    part.chmod(0o644)
    part.replace(out)
    return out
