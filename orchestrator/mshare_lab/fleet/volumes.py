"""The artifact cache and per-run files of one host, kept in a libvirt storage pool.

Why a storage pool: the lab reaches a remote host only through libvirt's own remote
protocol (plus SSH for a command or two), never scp/rsync into a path it assumes. A
``dir`` pool is a directory on the host that libvirt manages; ``virStorageVol.upload``
and ``download`` stream bytes over the same connection the domains use, so an artifact
reaches the host with the host's own permissions and paths, and ``gc``/``doctor`` list
and delete it through the same API.

Why content addressing: a cached volume is named ``<first 24 hex of sha256>-<basename>``,
so a name says what the bytes are: an artifact crosses the network once per host, a
second run (or another orchestrator) uploads nothing, and a rebuilt kernel gets a new
name instead of overwriting a file a running guest boots from. Hashes are remembered per
(path, size, mtime) in this process, so a matrix does not hash a bzImage per scenario.

Why compose: the micro guest's per-scenario initrd is the shared base initramfs plus a
few hundred bytes of gzip cpio (concatenated cpio archives are a valid initramfs).
``compose`` makes it on the host with ``createXMLFrom`` (a host-local copy of the cached
base, given a larger capacity) plus an upload of the tail at the base's end, so only the
tail crosses the network.

Per-run volumes (the composed initrd, serial logs virtlogd writes into the pool dir) are
named with the run's prefix and removed after each scenario; ``download_new`` follows a
growing log by asking only for the bytes beyond what the local copy has. The guest writes
those files, so they are untrusted input: downloads are capped.

Errors: a libvirt failure surfaces as ``ProvisionError`` whose ``__cause__`` is the
``libvirt.libvirtError`` (a lost connection included).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import escape

import libvirt

from ..errors import NotFoundError, ProvisionError

log = logging.getLogger(__name__)

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

DEFAULT_POOL_PATH = "/var/lib/mshare-lab/pool"
DEFAULT_POOL_NAME = "mshare-lab"
DEFAULT_MAX_DOWNLOAD = 64 << 20
#: a cache volume's name: 24 hex of the content's sha256, a dash, the sanitized basename
CACHE_NAME = re.compile(r"^[0-9a-f]{24}-")
#: bytes per stream send/recv: libvirt's RPC payload limit is 256 KiB
_CHUNK = 256 << 10
_PHYSICAL = libvirt.VIR_STORAGE_VOL_GET_PHYSICAL

_hash_lock = threading.Lock()
_hashes: dict[tuple[str, int, int], str] = {}   # (resolved path, size, mtime_ns) -> sha256 hex


def content_hash(path: Path) -> str:
    """sha256 hex of ``path``, remembered per (path, size, mtime) for this process: every
    host's cache asks for the same artifacts, and a change of the file changes the key."""
    resolved = path.resolve()
    st = resolved.stat()
    key = (str(resolved), st.st_size, st.st_mtime_ns)
    with _hash_lock:
        known = _hashes.get(key)
    if known:
        return known
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    with _hash_lock:
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def cache_name(path: Path) -> str:
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", path.name)[:100]
    return f"{content_hash(path)[:24]}-{base}"


@dataclass
class VolumeCounters:
    uploads: int = 0          # artifacts sent to the host (cache misses)
    uploaded_bytes: int = 0   # of artifacts and composed tails
    hits: int = 0             # artifacts the host already had
    downloaded_bytes: int = 0


def _volume_xml(name: str, capacity: int) -> str:
    return ("<volume><name>{}</name><capacity unit='bytes'>{}</capacity>"
            "<allocation unit='bytes'>0</allocation>"
            # 0644: QEMU runs as its own user and reads kernels and initrds several guests share
            "<target><format type='raw'/><permissions><mode>0644</mode></permissions></target>"
            "</volume>").format(escape(name), capacity)


def _check_name(name: str) -> None:
    if not name or "/" in name or name.startswith(".") or len(name) > 200:
        raise ValueError(f"not a volume name the lab makes: {name!r}")


class HostVolumes:
    """The lab's storage pool on one host (``conn``): artifact cache and per-run volumes."""

    def __init__(self, conn: libvirt.virConnect, pool_path: str = DEFAULT_POOL_PATH,
                 pool_name: str = DEFAULT_POOL_NAME, *, stall_s: float = 10.0):
        self.conn = conn
        self.pool_path = pool_path.rstrip("/") or "/"
        self.pool_name = pool_name
        #: how long a short cache volume must stay the same size before it counts as the
        #: leftover of a dead upload rather than another orchestrator's upload in progress
        self.stall_s = stall_s
        self.counters = VolumeCounters()
        self._pool: libvirt.virStoragePool | None = None
        self._lock = threading.Lock()                 # pool handle, counters, key locks
        self._key_locks: dict[str, threading.Lock] = {}

    def _where(self) -> str:
        try:
            return self.conn.getURI().split("?")[0]
        except libvirt.libvirtError:
            return "host"

    @contextmanager
    def _libvirt(self, what: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as exc:
            raise ProvisionError(f"{self._where()}: {what}: {exc.get_error_message()}") from exc

    # --- the pool ------------------------------------------------------------------------

    def ensure_pool(self) -> libvirt.virStoragePool:
        """The pool, defined (persistent, autostart), built and started when it is not."""
        with self._lock:
            if self._pool is not None and self._pool.isActive():
                return self._pool
            with self._libvirt(f"storage pool {self.pool_name}"):
                try:
                    pool = self.conn.storagePoolLookupByName(self.pool_name)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                        raise
                    # 0755: the qemu user traverses it to the volumes and virtlogd's files
                    xml = ("<pool type='dir'><name>{}</name><target><path>{}</path>"
                           "<permissions><mode>0755</mode></permissions></target>"
                           "</pool>").format(escape(self.pool_name), escape(self.pool_path))
                    pool = self.conn.storagePoolDefineXML(xml, 0)
                    pool.setAutostart(1)
                    log.info("defined storage pool %s at %s", self.pool_name, self.pool_path)
                path = ET.fromstring(pool.XMLDesc(0)).findtext("target/path")
                if path != self.pool_path:
                    raise ProvisionError(
                        f"{self._where()}: storage pool {self.pool_name} is at {path}, not {self.pool_path}",
                        hint="set the host's pool in the lab file to that path, or undefine the pool")
                if not pool.isActive():
                    pool.build(0)      # dir pool: mkdir -p, harmless when it exists
                    pool.create(0)
            self._pool = pool
            return pool

    def _refresh(self) -> None:
        with self._libvirt("refresh of the storage pool"):
            self.ensure_pool().refresh(0)

    def _lookup(self, name: str, *, refresh: bool = False) -> libvirt.virStorageVol | None:
        """The volume, or None. ``refresh``: rescan the pool dir when libvirt does not know
        the name yet (files libvirt did not create, such as virtlogd's serial logs)."""
        pool = self.ensure_pool()
        for attempt in (0, 1):
            try:
                return pool.storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise ProvisionError(f"{self._where()}: volume {name}: {exc.get_error_message()}") from exc
            if not refresh or attempt:
                return None
            self._refresh()
        return None

    @staticmethod
    def _size(vol: libvirt.virStorageVol) -> int:
        # the file's size on the host: capacity would be a qcow2's virtual size; libvirt
        # stats the file on every call, so a growing log reads current
        return vol.infoFlags(_PHYSICAL)[2]

    def _size_or_none(self, vol: libvirt.virStorageVol) -> int | None:
        try:
            return self._size(vol)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None       # deleted or rotated away since the lookup
            raise ProvisionError(f"{self._where()}: size of {vol.name()}: {exc.get_error_message()}") from exc

    # --- artifact cache ------------------------------------------------------------------

    def _key_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(name, threading.Lock())

    def cached(self, path: Path) -> str:
        """The host-side path of ``path``'s content in the cache, uploaded if missing."""
        path = Path(path)
        if not path.is_file():
            raise NotFoundError(f"artifact {path} does not exist")
        size = path.stat().st_size
        name = cache_name(path)
        # one thread per artifact at a time: parallel scenarios asking for the same
        # bzImage wait for the one upload instead of sending it twice
        with self._key_lock(name):
            vol = self._complete_or_clear(name, size)
            if vol is not None:
                with self._lock:
                    self.counters.hits += 1
                return vol.path()
            return self._upload(path, name, size).path()

    def _complete_or_clear(self, name: str, size: int) -> libvirt.virStorageVol | None:
        """The cached volume when it is complete; a short one left by a dead upload is
        deleted (after ``stall_s`` without growth, so another orchestrator's upload in
        progress is waited for rather than destroyed)."""
        vol = self._lookup(name)
        if vol is None:
            return None
        seen, still_since = self._size_or_none(vol), time.monotonic()
        while seen is not None and seen < size and time.monotonic() - still_since < self.stall_s:
            time.sleep(min(0.5, self.stall_s))
            now = self._size_or_none(vol)
            if now != seen:
                seen, still_since = now, time.monotonic()
        if seen == size:
            return vol
        if seen is not None:
            log.warning("%s: cached volume %s has %d bytes, the artifact %d: replacing it",
                        self._where(), name, seen, size)
            with self._libvirt(f"delete of the incomplete volume {name}"):
                vol.delete(0)
        return None

    def _upload(self, path: Path, name: str, size: int) -> libvirt.virStorageVol:
        # Completeness without a rename (libvirt has none): the volume is created with
        # capacity 0, so the file on the host grows only as the stream's bytes arrive in
        # order, and a killed upload (Ctrl-C, SIGKILL, lost connection) leaves a file
        # shorter than the artifact, which _complete_or_clear never takes for complete. A
        # name collision with a same-size file cannot hold other bytes: the name is the
        # content's hash. This is cheaper than uploading to a temporary name and copying
        # (createXMLFrom) to the final one, and correct for every format: createXMLFrom
        # from a volume libvirt probes as qcow2 runs qemu-img convert, which would change
        # the bytes a content-addressed name promises.
        pool = self.ensure_pool()
        with self._libvirt(f"create of volume {name}"):
            try:
                vol = pool.createXML(_volume_xml(name, 0), 0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                    raise
                # a file libvirt had not seen (pool not refreshed): look again
                self._refresh()
                found = self._complete_or_clear(name, size)
                if found is not None:
                    return found
                vol = pool.createXML(_volume_xml(name, 0), 0)
        started = time.monotonic()
        with open(path, "rb") as f:
            self._fill(vol, 0, size, iter(lambda: f.read(_CHUNK), b""), size, f"upload of {path}")
        seconds = time.monotonic() - started
        log.info("uploaded %s to %s:%s (%d bytes, %.1f MB/s)", path, self._where(), name, size,
                 size / 1e6 / max(seconds, 1e-6))
        with self._lock:
            self.counters.uploads += 1
            self.counters.uploaded_bytes += size
        return vol

    def _fill(self, vol: libvirt.virStorageVol, offset: int, length: int, chunks, expected: int,
              what: str) -> None:
        """Send ``chunks`` into ``vol`` at ``offset`` and check its final size; on any failure
        the volume is deleted (best effort: a short cache volume is replaced on the next ask)."""
        try:
            if length:
                self._send(vol, offset, length, chunks)
            got = self._size_or_none(vol)
            if got != expected:
                raise ProvisionError(f"{self._where()}: {what} gave {got} bytes, expected {expected}")
        except BaseException:
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
            raise

    def _send(self, vol: libvirt.virStorageVol, offset: int, length: int, chunks) -> None:
        stream = self.conn.newStream(0)
        with self._libvirt(f"upload to {vol.name()}"):
            try:
                vol.upload(stream, offset, length, 0)
                sent = 0
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        n = stream.send(view.tobytes())
                        if n < 0:
                            raise ProvisionError(f"{self._where()}: upload stream to {vol.name()} failed")
                        view = view[n:]
                        sent += n
                if sent != length:
                    raise ProvisionError(f"{self._where()}: sent {sent} bytes to {vol.name()}, expected {length}")
                stream.finish()
            except BaseException:
                try:
                    stream.abort()
                except libvirt.libvirtError:
                    pass
                raise

    # --- per-run volumes -------------------------------------------------------------------

    def compose(self, base_path: Path, tail: bytes, name: str) -> str:
        """A per-run volume ``name`` = the cached ``base_path`` + ``tail``; only the tail is
        sent: the host copies the base locally (createXMLFrom into a larger capacity, which
        libvirt allows for raw dir volumes) and the tail is uploaded at the base's end."""
        _check_name(name)
        self.cached(Path(base_path))
        base = self._lookup(cache_name(Path(base_path)))
        if base is None:
            raise ProvisionError(f"{self._where()}: the cached {base_path} vanished before compose")
        fmt = ET.fromstring(base.XMLDesc(0)).find("target/format")
        if fmt is not None and fmt.get("type") != "raw":
            # createXMLFrom would convert it with qemu-img instead of copying bytes
            raise ProvisionError(f"{self._where()}: compose needs a raw base, {base_path} is {fmt.get('type')}")
        base_size = self._size(base)
        pool = self.ensure_pool()
        old = self._lookup(name)
        with self._libvirt(f"compose of {name}"):
            if old is not None:      # a leftover of a killed compose under the same name
                old.delete(0)
            vol = pool.createXMLFrom(_volume_xml(name, base_size + len(tail)), base, 0)
        self._fill(vol, base_size, len(tail), [tail] if tail else [], base_size + len(tail), f"compose of {name}")
        with self._lock:
            self.counters.uploaded_bytes += len(tail)
        return vol.path()

    def run_volume_path(self, name: str) -> str:
        """Where a per-run output file (a serial log) goes on the host: in the pool dir, so
        ``download_new`` and ``delete_run_volumes`` reach it as a volume."""
        _check_name(name)
        return f"{self.pool_path}/{name}"

    def download_new(self, name: str, local: Path, max_bytes: int = DEFAULT_MAX_DOWNLOAD) -> int:
        """Append to ``local`` the bytes of volume ``name`` beyond ``local``'s size, up to
        ``max_bytes`` in all; the bytes added (0 when the volume does not exist yet). A
        volume shorter than ``local`` was replaced (virtlogd rotated the log): ``local``
        starts over from its first byte."""
        vol = self._lookup(name, refresh=True)
        size = None if vol is None else self._size_or_none(vol)
        if size is None:
            return 0
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        have = local.stat().st_size if local.exists() else 0
        if size < have:
            local.write_bytes(b"")
            have = 0
        want = min(size, max_bytes) - have
        if want <= 0:
            return 0
        stream = self.conn.newStream(0)
        added = 0
        with self._libvirt(f"download of {name}"), open(local, "ab") as out:
            try:
                vol.download(stream, have, want, 0)
                while added < want:
                    data = stream.recv(min(_CHUNK, want - added))
                    if not data:           # b"": end of stream
                        break
                    if isinstance(data, int):
                        raise ProvisionError(f"{self._where()}: download stream of {name} failed ({data})")
                    out.write(data)
                    added += len(data)
                stream.finish()
            except BaseException:
                try:
                    stream.abort()
                except libvirt.libvirtError:
                    pass
                raise
        with self._lock:
            self.counters.downloaded_bytes += added
        return added

    def download_all(self, prefix_name: str, local_dir: Path,
                     max_bytes: int = DEFAULT_MAX_DOWNLOAD) -> int:
        """Fetch ``prefix_name`` and its rotated parts (``prefix_name.0``, ``.1``...) into
        ``local_dir`` under the same names; the bytes added."""
        rotated = re.compile(re.escape(prefix_name) + r"(\.\d+)?")
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        return sum(self.download_new(name, local_dir / name, max_bytes)
                   for name, _size in self.list_volumes() if rotated.fullmatch(name))

    def delete_run_volumes(self, prefix: str) -> int:
        """Delete the volumes whose name starts with ``prefix`` (one run's); how many."""
        head = prefix[:24]
        if all(c in "0123456789abcdef" for c in head) and (len(prefix) <= 24 or prefix[24] == "-"):
            # it could match cache volumes too (the empty prefix matches everything)
            raise ValueError(f"not a run prefix: {prefix!r}")
        deleted = 0
        for name, _size in self.list_volumes():
            if not name.startswith(prefix):
                continue
            vol = self._lookup(name)
            if vol is None:
                continue
            try:
                vol.delete(0)
                deleted += 1
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise ProvisionError(f"{self._where()}: delete of {name}: {exc.get_error_message()}") from exc
        return deleted

    def list_volumes(self) -> list[tuple[str, int]]:
        """(name, bytes) of every volume in the pool, sorted by name, after a rescan."""
        self._refresh()
        out = []
        with self._libvirt("list of the storage pool"):
            for vol in self.ensure_pool().listAllVolumes(0):
                size = self._size_or_none(vol)
                if size is not None:
                    out.append((vol.name(), size))
        return sorted(out)

    def cache_bytes(self) -> int:
        """Bytes the artifact cache holds on the host (per-run volumes not counted)."""
        return sum(size for name, size in self.list_volumes() if CACHE_NAME.match(name))


def remove_pool(conn: libvirt.virConnect, name: str) -> bool:
    """Delete a lab pool with every volume in it (the cache too) and undefine it.

    For throw-away pools (tests, benchmarks) and ``gc --all --cache``-style wipes; False when
    there is no such pool."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return False
    if pool.isActive():
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
    pool.undefine()
    return True
