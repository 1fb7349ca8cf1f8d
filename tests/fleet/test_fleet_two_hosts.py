"""A lab of two hosts on this one machine: ``qemu:///system`` and the same libvirtd reached as
a remote host over a real SSH connection (``qemu+ssh://root@127.0.0.1:PORT/system`` through
the loopback sshd, the lab's key and a known_hosts file).

The RAM limits of the lab file let each host hold one 512 MiB guest at a time, so a
two-scenario matrix with ``--parallel 2`` must be split across both hosts. Everything the
remote host gets, it gets through libvirt: artifacts as storage volumes of its pool (so
the second run uploads nothing), console and serial files downloaded from the pool. The
tests look at the host's side through the local libvirt connection only to check for
leftovers, the way an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import libvirt
import pytest

from fleet_helpers import cut_connection, start_ssh_libvirt_host, stop_ssh_libvirt_host
from mshare_lab.guest.domain import DOMAIN_PREFIX
from mshare_lab.guest.host_files import pool_name_for
from mshare_lab.results.store import ResultStore

pytestmark = pytest.mark.vm

CLI = str(Path(sys.executable).parent / "mshare-lab")
MATRIX = """\
defaults:
  kernels: debian-6.1
  duration: {duration}
  timeout: 300
  vcpus: 1
matrix:
  - mechanisms: [shmem, hugetlb]
    sga: 16M
    clients: 4
    ram: 512M
"""


def pool_dir(tmp_path: Path) -> Path:
    """A pool directory the qemu user can reach (pytest's tmp dirs are 0700 to root only)."""
    from mshare_lab import paths
    path = paths.lab_home() / "test-pools" / f"{tmp_path.name}-{os.getpid()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o755)
    return path


def write_lab(path: Path, host, pool: Path, *, ram: str = "1G") -> Path:
    path.write_text(f"""\
hosts:
  - name: here
    uri: qemu:///system
    ram: {ram}
  - name: loop
    uri: {host.uri}
    ssh_key: "{host.transport.key}"
    known_hosts: "{host.transport.known_hosts}"
    ram: {ram}
    pool: "{pool}"
""")
    return path


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def start_run(matrix: Path, lab: Path, results: Path) -> subprocess.Popen:
    """``mshare-lab run --parallel 2`` in the background; the test reads its stderr lines."""
    return subprocess.Popen([CLI, "run", str(matrix), "--lab", str(lab), "--parallel", "2", "--results", str(results)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_ids_on_host(run_id_prefix: str = DOMAIN_PREFIX) -> list[str]:
    conn = libvirt.open("qemu:///system")
    try:
        return [d.name() for d in conn.listAllDomains(0) if d.name().startswith(run_id_prefix)]
    finally:
        conn.close()


def pool_files(pool: Path) -> list[str]:
    return sorted(p.name for p in pool.iterdir()) if pool.exists() else []


def uploads(stderr: str, host: str = "loop") -> tuple[int, int]:
    """(artifacts uploaded, cache hits) from the run's per-host line."""
    import re
    match = re.search(rf"host {host}: uploaded (\d+) artifact\(s\) \(\d+ bytes\), (\d+) cache hit", stderr)
    assert match, stderr[-2000:]
    return int(match.group(1)), int(match.group(2))


def run_id_of(stderr: str) -> str:
    import re
    match = re.search(rf"boot ({DOMAIN_PREFIX}(\S+)-\d+) ", stderr)
    assert match, stderr[-2000:]
    return match.group(2)


@pytest.fixture(scope="module")
def two_runs(ssh_libvirt_host, tmp_path_factory):
    """The same matrix run twice on the two-host lab; (first, second, store path, pool)."""
    tmp = tmp_path_factory.mktemp("two-hosts")
    pool = pool_dir(tmp)
    lab = write_lab(tmp / "lab.yaml", ssh_libvirt_host, pool)
    matrix = tmp / "matrix.yaml"
    matrix.write_text(MATRIX.format(duration=1))
    results = tmp / "results.sqlite"
    try:
        first = run_cli("run", str(matrix), "--lab", str(lab), "--parallel", "2", "--results", str(results))
        second = run_cli("run", str(matrix), "--lab", str(lab), "--parallel", "2", "--results", str(results))
        yield first, second, results, pool
    finally:
        _remove_pool(pool)


def _remove_pool(pool: Path) -> None:
    import shutil
    from fleet_helpers import remove_pool
    remove_pool(pool_name_for(str(pool)))
    shutil.rmtree(pool, ignore_errors=True)


def test_a_matrix_is_split_across_both_hosts(two_runs):
    first, second, results, _pool = two_runs
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    with ResultStore(results) as store:
        records = store.runs()
    assert len(records) == 4
    assert "hosts here ran 1, loop ran 1" in first.stdout, first.stdout
    assert all(r.outcome == "completed" for r in records), [(r.scenario_id, r.outcome, r.reason) for r in records]
    for run in (records[:2], records[2:]):
        # one 512 MiB guest (+256 MiB QEMU) per 1 GiB host: each run used both hosts
        assert sorted(r.host["name"] for r in run) == ["here", "loop"], [r.host for r in run]
    loop = next(r.host for r in records if r.host["name"] == "loop")
    assert loop["uri"].startswith("qemu+ssh://root@127.0.0.1:") and "?" not in loop["uri"]
    assert loop["accelerator"] in ("kvm", "tcg") and loop["cpu_model"] and loop["kernel"] == os.uname().release
    # the remote guest's console came back through the pool: its progress lines are there
    remote = next(r for r in records if r.host["name"] == "loop")
    console = Path(remote.console_log).read_text(errors="replace")
    assert "MSHARE-LAB-PROGRESS" in console and "reboot: Power down" in console
    assert remote.metric("pte_ratio") is not None


def test_an_artifact_crosses_to_a_host_once(two_runs):
    first, second, _results, pool = two_runs
    # the kernel and the micro base image: uploaded by the first run, by the second not at all
    assert uploads(first.stderr)[0] == 2, first.stderr[-2000:]
    up, hits = uploads(second.stderr)
    # (a hit per artifact use: the kernel, the base under the composed initrd, ...)
    assert up == 0 and hits >= 2, second.stderr[-2000:]


def test_nothing_but_the_cache_stays_on_either_host(two_runs):
    first, second, _results, pool = two_runs
    for run in (first, second):
        assert not run_ids_on_host(f"{DOMAIN_PREFIX}{run_id_of(run.stderr)}-")
    files = pool_files(pool)
    assert len(files) == 2 and all(not f.startswith(DOMAIN_PREFIX) for f in files), files
    assert any(f.endswith("-bzImage") for f in files)


def test_a_scenario_larger_than_every_host_is_refused_before_any_guest(ssh_libvirt_host, tmp_path):
    pool = pool_dir(tmp_path)
    lab = write_lab(tmp_path / "lab.yaml", ssh_libvirt_host, pool, ram="1G")
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(duration=1).replace("ram: 512M", "ram: 2G"))
    before = run_ids_on_host()
    started = time.monotonic()
    done = run_cli("run", str(matrix), "--lab", str(lab), "--results", str(tmp_path / "r.sqlite"))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "matrix.yaml:" in done.stderr and "fits no host" in done.stderr, done.stderr[-2000:]
    assert "the largest host" in done.stderr and "debian-6.1/shmem/16M/x4/ram2G#1" in done.stderr
    assert "boot " + DOMAIN_PREFIX not in done.stderr
    assert run_ids_on_host() == before
    assert not (tmp_path / "r.sqlite").exists()
    assert time.monotonic() - started < 120
    _remove_pool(pool)


def test_a_host_that_fails_mid_run_hands_its_scenario_to_the_other(tmp_path):
    host = start_ssh_libvirt_host(tmp_path / "host")
    pool = pool_dir(tmp_path)
    lab = write_lab(tmp_path / "lab.yaml", host, pool)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(duration=15))
    results = tmp_path / "results.sqlite"
    proc = start_run(matrix, lab, results)
    lines: list[str] = []
    cut_at: list[float] = []
    on_loop: set[str] = set()

    def follow() -> None:
        for line in proc.stderr:
            lines.append(line)
            if line.rstrip().endswith("start on loop"):
                on_loop.add(line.split("] ", 1)[1].split(": ", 1)[0])
            if not cut_at and any(f"{sid}: transactions" in line for sid in on_loop):
                cut_at.append(time.time())
                cut_connection(host.sshd)   # the host is gone, in the middle of its scenario

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    restarted = None
    try:
        proc.wait(timeout=600)   # (the reader owns stderr; the table on stdout is small)
        reader.join(10)
        stdout = proc.stdout.read()
        stderr = "".join(lines)
        assert proc.returncode == 0, stderr[-3000:]
        assert cut_at, "the remote scenario never reached its transactions"
        assert "host loop failed at" in stderr and "goes to another host" in stderr, stderr[-3000:]
        assert "host loop FAILED at" in stdout and "1 scenario(s) moved" in stdout, stdout
        with ResultStore(results) as store:
            records = store.runs()
        assert [r.outcome for r in records] == ["completed", "completed"], [(r.outcome, r.reason) for r in records]
        moved = [r for r in records if r.host_failures]
        assert len(moved) == 1 and moved[0].host["name"] == "here"
        failure = moved[0].host_failures[0]
        assert failure["host"] == "loop" and "connection" in failure["reason"]
        shown = run_cli("results", "show", moved[0].run_id, "--results", str(results)).stdout
        assert "host       here (" in shown and "moved here after host loop failed at" in shown, shown
        assert abs(failure["at"] - cut_at[0]) < 30
        run_id = run_id_of(stderr)
        # libvirtd destroyed the cut-off guest itself (AUTODESTROY): nothing runs anywhere
        conn = libvirt.open("qemu:///system")
        try:
            running = [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                       if d.name().startswith(f"{DOMAIN_PREFIX}{run_id}-")]
        finally:
            conn.close()
        assert running == []
        assert "still unreachable" in stderr and "gc --lab" in stderr
        # the host answers again (a new sshd): gc --lab removes what the run had to leave there
        restarted = start_ssh_libvirt_host(tmp_path / "host-again")
        lab2 = write_lab(tmp_path / "lab2.yaml", restarted, pool)
        gc = run_cli("gc", "--lab", str(lab2))
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert not run_ids_on_host(f"{DOMAIN_PREFIX}{run_id}-")
        assert [f for f in pool_files(pool) if f.startswith(DOMAIN_PREFIX)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        cut_connection(host.sshd) if host.sshd.process.poll() is None else None
        host.close()
        if restarted is not None:
            stop_ssh_libvirt_host(restarted)
        _remove_pool(pool)


def test_ctrl_c_stops_the_guests_of_every_host(ssh_libvirt_host, tmp_path):
    import signal
    pool = pool_dir(tmp_path)
    lab = write_lab(tmp_path / "lab.yaml", ssh_libvirt_host, pool)
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(MATRIX.format(duration=60))
    results = tmp_path / "results.sqlite"
    proc = start_run(matrix, lab, results)
    lines: list[str] = []
    try:
        for line in proc.stderr:
            lines.append(line)
            # both guests run (one per host) and are in their transactions: interrupt
            if sum("transactions" in seen for seen in lines) >= 2 and len({
                    s.split("]", 1)[0] for s in lines if "transactions" in s}) >= 2:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=120)[1]
        stderr = "".join(lines) + rest
        assert proc.returncode == 130, stderr[-3000:]
        run_id = run_id_of(stderr)
        assert "start on here" in stderr and "start on loop" in stderr
        assert not run_ids_on_host(f"{DOMAIN_PREFIX}{run_id}-")
        assert [f for f in pool_files(pool) if f.startswith(DOMAIN_PREFIX)] == []
        assert not results.exists()   # an interrupted scenario is no result: no empty store either
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _remove_pool(pool)
