"""doctor --lab and gc --lab on a lab of this machine and the loopback SSH host (plus a host
whose sshd is stopped): every host is reported, a dead one does not stop the others."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from fleet_helpers import cut_connection, remove_pool
from mshare_lab.guest.domain import DomainSpec, LabMetadata, domain_name, process_start_time
from mshare_lab.guest.host_files import pool_name_for
from mshare_lab.guest.libvirt_driver import SCRATCH_OWNER_FILE, new_run_id

CLI = Path(sys.executable).parent / "mshare-lab"


def host_entry(name: str, ssh_host, pool: Path) -> list[str]:
    return ["  - name: " + name, f"    uri: {ssh_host.uri}", f"    ssh_key: {ssh_host.transport.key}",
            f"    known_hosts: {ssh_host.transport.known_hosts}", f"    pool: {pool}"]


def here_entry(pool: Path) -> list[str]:
    return ["  - name: here", "    uri: qemu:///system", f"    pool: {pool}"]


def write_lab(path: Path, *entries: list[str]) -> Path:
    path.write_text("\n".join(["hosts:", *[line for entry in entries for line in entry]]) + "\n")
    return path


def cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MSHARE_LAB_HOME": str(tmp_path / "home")}
    return subprocess.run([str(CLI), *argv], capture_output=True, text=True, timeout=300, env=env)


def section(text: str, host: str) -> str:
    """The lines a per-host command printed under ``host NAME (...)``."""
    match = re.search(rf"^host {host} \(.*?(?=^host |\Z)", text, re.M | re.S)
    assert match, f"no section for {host}:\n{text}"
    return match.group(0)


def dead_pid() -> tuple[int, str]:
    """The pid and start time of a process that has exited: an owner that is gone."""
    proc = subprocess.Popen(["sleep", "30"])
    start = process_start_time(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, start


def put_volume(conn: libvirt.virConnect, pool_name: str, name: str, data: bytes) -> str:
    pool = conn.storagePoolLookupByName(pool_name)
    vol = pool.createXML(f"<volume><name>{name}</name><capacity>0</capacity>"
                         "<target><format type='raw'/></target></volume>", 0)
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(data), 0)
    stream.send(data)
    stream.finish()
    return vol.path()


def volume_names(conn: libvirt.virConnect, pool_name: str) -> set[str]:
    pool = conn.storagePoolLookupByName(pool_name)
    pool.refresh(0)
    return {vol.name() for vol in pool.listAllVolumes(0)}


@pytest.fixture
def loop_pool(tmp_path, ssh_libvirt_host):
    """The SSH host's pool in tmp_path, defined over the ssh connection; removed afterwards."""
    from mshare_lab.fleet.volumes import HostVolumes
    path = tmp_path / "pools" / "loop"
    name = pool_name_for(str(path))
    HostVolumes(ssh_libvirt_host.open(), str(path), name).ensure_pool()
    try:
        yield path, name
    finally:
        remove_pool(name)


def test_doctor_reports_every_host_and_an_unreachable_one_fails_alone(tmp_path, ssh_libvirt_host, loop_pool,
                                                                    disposable_ssh_libvirt_host):
    pool, pool_name = loop_pool
    conn = ssh_libvirt_host.open()
    put_volume(conn, pool_name, "0123456789abcdef01234567-bzImage", b"k" * (3 << 20))
    gone = disposable_ssh_libvirt_host
    lab = write_lab(tmp_path / "lab.yaml", here_entry(tmp_path / "pools" / "here"),
                    host_entry("gone", gone, tmp_path / "pools" / "gone"), host_entry("loop", ssh_libvirt_host, pool))
    ready = write_lab(tmp_path / "ready.yaml", here_entry(tmp_path / "pools" / "here"),
                      host_entry("loop", ssh_libvirt_host, pool))

    out = cli(tmp_path, "doctor", "--lab", str(ready))
    assert out.returncode == 0, out.stdout + out.stderr
    for name, uri in (("here", "qemu:///system"), ("loop", ssh_libvirt_host.uri)):
        part = section(out.stdout, name)
        assert part.startswith(f"host {name} ({uri})")
        assert re.search(rf"^ok   {name} libvirt: {re.escape(uri)} reachable, QEMU \d+\.\d+", part, re.M), part
        assert re.search(rf"^(ok  |warn) {name} accelerator: (kvm|tcg|not probed yet)", part, re.M), part
        assert re.search(rf"^ok   {name} ram: \d+(\.\d)? [KMG]iB free$", part, re.M), part
        assert re.search(rf"^ok   {name} capacity: the lab may use \S+ [KMG]iB and \d+ vCPUs \(\d+ host CPUs", part,
                         re.M), part
        assert re.search(rf"^ok   {name} machine: CPU \w[\w-]*, Linux {re.escape(os.uname().release)}, hostname ",
                         part, re.M), part
    # the SSH host's disk is its pool's, as libvirt reports it, with the 3 MiB cache volume
    assert re.search(rf"^ok   loop disk: \S+ [KMGT]iB free of \S+ [KMGT]iB in pool {pool_name} \({pool}\); "
                     r"cache 3\.0 MiB$", out.stdout, re.M), out.stdout
    assert out.stdout.rstrip().splitlines()[-1].startswith("ready: every required check passed")

    cut_connection(gone.sshd)
    started = time.monotonic()
    out = cli(tmp_path, "doctor", "--lab", str(lab))
    seconds = time.monotonic() - started
    assert out.returncode == 1, out.stdout + out.stderr
    part = section(out.stdout, "gone")
    assert re.search(r"^FAIL gone libvirt: unreachable: .*cannot connect to libvirt at qemu\+ssh://root@127\.0\.0\.1:"
                     rf"{gone.sshd.port}/system.* -> check that gone is up and its sshd answers", part, re.M), part
    assert len(part.strip().splitlines()) == 2          # the header and the one failed check
    # the hosts before and after it were checked all the same
    assert re.search(r"^ok   here ram: ", out.stdout, re.M) and re.search(r"^ok   loop ram: ", out.stdout, re.M)
    assert out.stdout.rstrip().splitlines()[-1] == "1 required check(s) failed: gone libvirt"
    assert seconds < 60


def test_gc_sweeps_each_host_keeps_the_cache_and_skips_an_unreachable_one(tmp_path, ssh_libvirt_host, loop_pool,
                                                                          disposable_ssh_libvirt_host):
    pool, pool_name = loop_pool
    conn = ssh_libvirt_host.open()
    cache = "0123456789abcdef01234567-bzImage"
    kernel = put_volume(conn, pool_name, cache, b"k" * 4096)
    dead_run, live_run = new_run_id(), new_run_id()
    name = domain_name(dead_run, 1)
    console = put_volume(conn, pool_name, f"{name}-console.log", b"booting\n")
    orphan = f"{domain_name(dead_run, 2)}-serial.log"        # its domain is already gone
    put_volume(conn, pool_name, orphan, b"frames")
    live = f"{domain_name(live_run, 1)}.initrd.gz"             # uploaded, domain not defined yet
    put_volume(conn, pool_name, live, b"initrd")
    # the live run's scratch dir on this machine names this (live) process as its owner
    scratch = tmp_path / "home" / "scratch" / live_run
    scratch.mkdir(parents=True)
    (scratch / SCRATCH_OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "start": process_start_time(os.getpid()),
                                                          "created": time.time()}))
    pid, start = dead_pid()
    meta = LabMetadata(run_id=dead_run, owner_pid=pid, owner_start=start, created=time.time(),
                       files=(Path(console),))
    spec = DomainSpec(name=name, memory=128 << 20, vcpus=1, kernel=Path(kernel),
                      console_path=Path(console), metadata=meta)
    conn.defineXML(spec.to_xml())                              # defined, never started
    gone = disposable_ssh_libvirt_host
    cut_connection(gone.sshd)
    lab = write_lab(tmp_path / "lab.yaml", host_entry("loop", ssh_libvirt_host, pool),
                    host_entry("gone", gone, tmp_path / "pools" / "gone"), here_entry(tmp_path / "pools" / "here"))
    try:
        out = cli(tmp_path, "gc", "--lab", str(lab))
    finally:
        try:
            conn.lookupByName(name).undefine()
        except libvirt.libvirtError:
            pass
    assert out.returncode == 1, out.stdout + out.stderr
    loop = section(out.stdout, "loop")
    assert f"  removed domain {name}\n" in loop
    assert f"  removed file {console}\n" in loop
    assert f"  removed volume {orphan}\n" in loop
    assert "  removed 1 domain(s), 1 file(s)" in loop and loop.rstrip().endswith("; removed 1 volume(s)")
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(name)
    # the cache and the live run's upload stay; the dead run's volumes are gone
    assert volume_names(conn, pool_name) == {cache, live}
    assert re.search(r"^  unreachable, skipped: cannot connect to libvirt at qemu\+ssh://root@127\.0\.0\.1:"
                     rf"{gone.sshd.port}/system: .* -> is it up and does its sshd answer\?$",
                     section(out.stdout, "gone"), re.M), out.stdout
    assert re.search(r"^  removed \d+ domain\(s\)", section(out.stdout, "here"), re.M)   # swept after the dead one
    assert out.stdout.rstrip().splitlines()[-1].startswith("1 host(s) not swept: gone")

    # --all --cache: every run's volumes and the cache go too. (Through sweep_volumes: `gc --all`
    # would also remove every lab domain of this libvirtd, other tests' running guests included.)
    from mshare_lab.fleet.volumes import HostVolumes
    from mshare_lab.guest.gc import sweep_volumes
    volumes = HostVolumes(conn, str(pool), pool_name)
    assert sweep_volumes(volumes, live_runs={live_run}, everything=False) == []
    assert sorted(sweep_volumes(volumes, live_runs={live_run}, everything=True)) == [live]
    put_volume(conn, pool_name, live, b"initrd")
    assert sorted(sweep_volumes(volumes, live_runs=set(), everything=True, cache=True)) == [cache, live]
    assert volume_names(conn, pool_name) == set()


def test_cache_needs_all(tmp_path):
    out = cli(tmp_path, "gc", "--cache")
    assert out.returncode != 0 and "--cache deletes the hosts' artifact caches only with --all" in out.stderr
