"""volumes: the artifact cache and per-run volumes in a real pool, over the loopback ssh."""

from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

import libvirt
import pytest

from mshare_lab.errors import NotFoundError, ProvisionError
from mshare_lab.fleet.volumes import HostVolumes, cache_name, content_hash


def artifact(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def fetch(volumes: HostVolumes, name: str, tmp_path: Path) -> bytes:
    """The bytes of a volume, read back through libvirt (not from the pool dir)."""
    local = tmp_path / f"fetched-{secrets.token_hex(4)}"
    volumes.download_new(name, local, max_bytes=1 << 30)
    return local.read_bytes() if local.exists() else b""


def put(volumes: HostVolumes, name: str, data: bytes, offset: int = 0) -> libvirt.virStorageVol:
    """Write ``data`` at ``offset`` of volume ``name`` (created empty when missing), the
    way a guest's output file grows."""
    pool = volumes.ensure_pool()
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError:
        vol = pool.createXML(f"<volume><name>{name}</name><capacity>0</capacity>"
                             "<target><format type='raw'/></target></volume>", 0)
    if data:
        stream = volumes.conn.newStream(0)
        vol.upload(stream, offset, len(data), 0)
        stream.send(data)
        stream.finish()
    return vol


def test_an_artifact_is_uploaded_once(volumes, tmp_path):
    kernel = artifact(tmp_path / "bzImage", 3_000_001)
    path = volumes.cached(kernel)
    name = cache_name(kernel)
    assert path == f"{volumes.pool_path}/{name}"
    assert name == content_hash(kernel)[:24] + "-bzImage"
    assert (volumes.counters.uploads, volumes.counters.uploaded_bytes, volumes.counters.hits) == (1, 3_000_001, 0)
    assert volumes.cached(kernel) == path
    assert (volumes.counters.uploads, volumes.counters.hits) == (1, 1)
    # another orchestrator (a new HostVolumes, as a second run has) uploads nothing
    again = HostVolumes(volumes.conn, volumes.pool_path, volumes.pool_name)
    assert again.cached(kernel) == path and (again.counters.uploads, again.counters.hits) == (0, 1)
    assert fetch(volumes, name, tmp_path) == kernel.read_bytes()
    # a rebuilt kernel is another artifact: uploaded, the old one kept (guests may boot it)
    kernel.write_bytes(os.urandom(1000))
    assert volumes.cached(kernel) != path
    assert volumes.counters.uploads == 2 and volumes.counters.uploaded_bytes == 3_001_001
    assert {n for n, _ in volumes.list_volumes()} == {name, cache_name(kernel)}
    assert volumes.cache_bytes() == 3_001_001


def test_hashes_are_remembered_per_path_size_and_mtime(tmp_path):
    f = artifact(tmp_path / "initrd", 4096)
    first = content_hash(f)
    st = f.stat()
    f.write_bytes(os.urandom(4096))                  # same size...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and mtime: not read again
    assert content_hash(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert content_hash(f) != first


def test_parallel_asks_upload_once(volumes, tmp_path):
    kernel = artifact(tmp_path / "bzImage", 8_000_000)
    barrier = threading.Barrier(4)
    paths, errors = [], []

    def ask():
        barrier.wait()
        try:
            paths.append(volumes.cached(kernel))
        except Exception as exc:   # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(paths)) == 1 and len(paths) == 4
    assert (volumes.counters.uploads, volumes.counters.hits) == (1, 3)


def test_a_truncated_cached_volume_is_replaced(volumes, tmp_path):
    kernel = artifact(tmp_path / "bzImage", 1_000_000)
    data = kernel.read_bytes()
    # what a killed upload leaves: the right name, the first half of the bytes
    put(volumes, cache_name(kernel), data[:500_000])
    started = time.monotonic()
    volumes.cached(kernel)
    assert time.monotonic() - started >= volumes.stall_s   # waited for it to grow first
    assert volumes.counters.uploads == 1 and volumes.counters.hits == 0
    assert fetch(volumes, cache_name(kernel), tmp_path) == data


def test_a_missing_artifact_is_a_not_found_error(volumes, tmp_path):
    with pytest.raises(NotFoundError, match="nope"):
        volumes.cached(tmp_path / "nope")


def test_compose_is_base_plus_tail_without_sending_the_base_again(volumes, tmp_path):
    base = artifact(tmp_path / "initramfs.cpio.gz", 2_500_000)
    tail = os.urandom(700)
    started = time.monotonic()
    path = volumes.compose(base, tail, "mshare-lab-run1-s1-initrd")
    assert path == volumes.run_volume_path("mshare-lab-run1-s1-initrd")
    assert fetch(volumes, "mshare-lab-run1-s1-initrd", tmp_path) == base.read_bytes() + tail
    assert (volumes.counters.uploads, volumes.counters.uploaded_bytes) == (1, 2_500_700)
    other = os.urandom(300)
    volumes.compose(base, other, "mshare-lab-run1-s2-initrd")
    assert (volumes.counters.uploads, volumes.counters.uploaded_bytes) == (1, 2_501_000)
    assert fetch(volumes, "mshare-lab-run1-s2-initrd", tmp_path) == base.read_bytes() + other
    assert time.monotonic() - started < 10
    # a per-run volume is not cache
    assert volumes.cache_bytes() == 2_500_000


def test_download_new_follows_a_growing_volume(volumes, tmp_path):
    name = "mshare-lab-run2-s1-serial.log"
    local = tmp_path / "serial.log"
    assert volumes.download_new(name, local) == 0 and not local.exists()
    put(volumes, name, b"")
    assert volumes.download_new(name, local) == 0
    first, second = os.urandom(100_000), os.urandom(300_123)
    put(volumes, name, first)
    assert volumes.download_new(name, local) == 100_000
    assert volumes.download_new(name, local) == 0
    put(volumes, name, second, offset=len(first))
    assert volumes.download_new(name, local) == 300_123
    assert local.read_bytes() == first + second
    assert volumes.counters.downloaded_bytes == 400_123


def test_download_new_stops_at_max_bytes(volumes, tmp_path):
    name = "mshare-lab-run3-s1-out"
    data = os.urandom(1_000_000)
    put(volumes, name, data)
    local = tmp_path / "out"
    assert volumes.download_new(name, local, max_bytes=100_000) == 100_000
    assert volumes.download_new(name, local, max_bytes=100_000) == 0
    assert local.read_bytes() == data[:100_000]


def test_rotated_logs_are_fetched_under_their_names(volumes, tmp_path):
    name = "mshare-lab-run4-s1-serial.log"
    live = tmp_path / "live"
    put(volumes, name, b"A" * 5000)
    assert volumes.download_new(name, live / name) == 5000
    # virtlogd rotated: the old log became .0, a new shorter one started
    put(volumes, name + ".0", b"A" * 5000)
    put(volumes, name + ".1", b"Z" * 10)
    volumes.ensure_pool().storageVolLookupByName(name).delete(0)
    put(volumes, name, b"B" * 10)
    put(volumes, "mshare-lab-run4-s1-serial.logx", b"not a part")
    assert volumes.download_new(name, live / name) == 10       # started over
    assert (live / name).read_bytes() == b"B" * 10
    out = tmp_path / "all"
    assert volumes.download_all(name, out) == 5020
    assert sorted(p.name for p in out.iterdir()) == [name, name + ".0", name + ".1"]
    assert (out / (name + ".0")).read_bytes() == b"A" * 5000
    assert volumes.download_all(name, out) == 0


def test_delete_run_volumes_leaves_only_the_cache(volumes, tmp_path):
    kernel = artifact(tmp_path / "bzImage", 10_000)
    base = artifact(tmp_path / "initramfs", 20_000)
    volumes.cached(kernel)
    volumes.compose(base, b"tail", "mshare-lab-run5-s1-initrd")
    put(volumes, "mshare-lab-run5-s1-serial.log", b"boot")
    put(volumes, "mshare-lab-run6-s1-serial.log", b"other run")
    assert volumes.delete_run_volumes("mshare-lab-run5-") == 2
    assert volumes.list_volumes() == sorted([(cache_name(kernel), 10_000), (cache_name(base), 20_000),
                                             ("mshare-lab-run6-s1-serial.log", 9)])
    assert volumes.delete_run_volumes("mshare-lab-run6-") == 1
    assert volumes.cache_bytes() == 30_000
    for bad in ("", "3f", "0123456789abcdef01234567-"):
        with pytest.raises(ValueError):
            volumes.delete_run_volumes(bad)


def test_ensure_pool_is_idempotent_and_checks_the_path(volumes, ssh_conn):
    pool = volumes.ensure_pool()
    assert pool.isActive() and pool.isPersistent() and pool.autostart()
    fresh = HostVolumes(ssh_conn, volumes.pool_path, volumes.pool_name)
    assert fresh.ensure_pool().UUIDString() == pool.UUIDString()
    with pytest.raises(ProvisionError, match="is at .*, not /elsewhere"):
        HostVolumes(ssh_conn, "/elsewhere", volumes.pool_name).ensure_pool()


def test_ensure_pool_defines_builds_and_starts(ssh_conn, tmp_path):
    name = f"mshare-lab-test-{secrets.token_hex(3)}"
    path = tmp_path / "new" / "pool"
    vols = HostVolumes(ssh_conn, str(path), name)
    try:
        pool = vols.ensure_pool()
        assert path.is_dir() and pool.isActive() and pool.autostart()
        pool.destroy()                       # an inactive pool (host rebooted, autostart off)
        assert HostVolumes(ssh_conn, str(path), name).ensure_pool().isActive()
    finally:
        pool = ssh_conn.storagePoolLookupByName(name)
        pool.destroy()
        pool.undefine()
