"""Scenarios per hour on one host against two, and what a remote host costs per scenario.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/fleet_placement.py [--scenarios 6] [--rounds 1]

Runs one fixed small micro matrix (16 MiB x 4 clients in 512 MiB guests, 1 s of
transactions; ``--scenarios`` of them) three ways, each into its own throw-away SQLite
store:

* one host, ``qemu:///system``, one guest at a time, then two at a time (the same
  concurrency as the two-host runs, on one host);
* two hosts, ``qemu:///system`` and this machine's libvirtd again over
  ``qemu+ssh://root@127.0.0.1`` (a loopback sshd with a key of its own), one guest at a
  time on each: placement splits the matrix;
* the same two hosts a second time, with the remote artifact cache already warm.

Both hosts are this machine, so the two-host figure shows the placement's and the remote
transport's overhead on the same two CPUs, not a speedup. Per-scenario overhead is wall
time minus guest time, from the run records, split by the host that ran each scenario.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "deploy"))

from deploy_helpers import start_sshd  # noqa: E402

from mshare_lab import paths  # noqa: E402
from mshare_lab.fleet import lab_file  # noqa: E402
from mshare_lab.fleet.host import hosts_for  # noqa: E402
from mshare_lab.guest.host_files import pool_name_for  # noqa: E402
from mshare_lab.guest.libvirt_driver import new_run_id  # noqa: E402
from mshare_lab.lab.matrix import loads  # noqa: E402
from mshare_lab.lab.runner import run_matrix  # noqa: E402
from mshare_lab.results.store import ResultStore  # noqa: E402

MATRIX = """\
defaults: {{kernels: debian-6.1, duration: 1, timeout: 300, vcpus: 1, sga: 16M, clients: 4, ram: 512M}}
matrix:
  - {{mechanisms: shmem, repeats: {n}}}
"""


def run(lab, matrix, store_dir: Path, label: str, parallel: int = 1) -> dict:
    hosts = hosts_for(lab, run_id=new_run_id(), parallel=parallel)
    with ResultStore(store_dir / f"{label}.sqlite") as store:
        started = time.monotonic()
        records = run_matrix(matrix, store=store, hosts=hosts, progress=lambda line: None)
        wall = time.monotonic() - started
    for host in hosts:
        host.close()
    by_host: dict[str, list[float]] = {}
    for record in records:
        by_host.setdefault(record.host["name"], []).append(record.overhead_seconds)
    uploads = {h.name: h.driver.files.counters.uploads for h in hosts if h.driver.files.counters is not None}
    outcomes = {r.outcome for r in records}
    return {"label": label, "wall": wall, "per_hour": len(records) / wall * 3600, "by_host": by_host,
            "uploads": uploads, "outcomes": outcomes, "n": len(records)}


def _remove_pool(name: str) -> None:
    """The benchmark's pool and its volumes (the cache it warmed) go with it."""
    import libvirt
    from mshare_lab.fleet.volumes import remove_pool
    conn = libvirt.open("qemu:///system")
    try:
        remove_pool(conn, name)
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=6)
    args = parser.parse_args()
    matrix = loads(MATRIX.format(n=args.scenarios))
    work = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    sshd = start_sshd(work / "sshd")
    pool = paths.lab_home() / "bench-pool"
    try:
        one = lab_file.default_lab()
        two = lab_file.LabFile(hosts=(
            lab_file.HostSpec(name="here", uri="qemu:///system"),
            lab_file.HostSpec(name="loop", uri=f"qemu+ssh://root@127.0.0.1:{sshd.port}/system",
                              ssh_key=sshd.target.key, known_hosts=sshd.target.known_hosts, pool=str(pool))))
        results = [run(one, matrix, work, "one-host"), run(one, matrix, work, "one-host-x2", parallel=2),
                   run(two, matrix, work, "two-hosts-cold"), run(two, matrix, work, "two-hosts-warm")]
    finally:
        sshd.stop()
        _remove_pool(pool_name_for(str(pool)))
        shutil.rmtree(pool, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':16} {'scenarios':>9} {'wall':>8} {'per hour':>9}  overhead per scenario (median, by host)  uploads")
    for r in results:
        overhead = ", ".join(f"{name} {statistics.median(v):.2f} s (n={len(v)})" for name, v in sorted(r["by_host"].items()))
        print(f"{r['label']:16} {r['n']:>9} {r['wall']:>7.1f}s {r['per_hour']:>9.0f}  {overhead}  {r['uploads'] or '-'}"
              + ("" if r["outcomes"] == {"completed"} else f"  OUTCOMES {sorted(r['outcomes'])}"))


if __name__ == "__main__":
    main()
