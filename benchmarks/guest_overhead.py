#!/usr/bin/env python3
"""Print what the lab itself costs per guest: KVM probe time, boot-to-poweroff of a tiny
guest, and the orchestrator's overhead around a real micro scenario (wall - guest time).

    .venv/bin/python benchmarks/guest_overhead.py [--repeat N] [--no-scenario]

Figures only, no thresholds: the host load decides them (QEMU TCG on 2 shared cores).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

from mshare_lab.guest import probe, testing
from mshare_lab.guest.domain import DomainSpec, owner_metadata
from mshare_lab.guest.libvirt_driver import LibvirtDriver


def tiny_boot(driver: LibvirtDriver, kernel, workdir) -> tuple[float, float, float]:
    """(seconds to define+start, guest seconds, seconds to tear down) of a guest that powers off."""
    initrd = testing.tiny_initrd("poweroff -f", workdir / f"{driver.new_name()}.gz")
    spec = DomainSpec(name=driver.new_name(), memory=256 << 20, vcpus=1, kernel=kernel, initrd=initrd,
                      console_path=workdir / "console.log", cmdline="console=ttyS0 panic=-1 quiet",
                      metadata=owner_metadata(driver.run_id, files=(initrd,)))
    t0 = time.monotonic()
    ctx = driver.boot(spec)
    guest = ctx.__enter__()
    t1 = time.monotonic()
    try:
        guest.wait(300)
        guest_seconds = guest.guest_seconds
    finally:
        t2 = time.monotonic()
        ctx.__exit__(None, None, None)
    return t1 - t0, guest_seconds, time.monotonic() - t2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-scenario", dest="scenario", action="store_false")
    args = parser.parse_args()
    print(f"host load average: {os.getloadavg()[0]:.1f}")
    kernel = testing.debian_kernel()
    workdir = testing.lab_scratch("bench-")
    try:
        with LibvirtDriver() as driver:
            started = time.monotonic()
            verdict = probe.probe_domain_type(driver, kernel=kernel, force=True)
            print(f"kvm probe (uncached): {time.monotonic() - started:.2f} s -> {verdict.domain_type}")
            started = time.monotonic()
            probe.probe_domain_type(driver)
            print(f"kvm probe (cached):   {(time.monotonic() - started) * 1000:.1f} ms")
            starts, guests, teardowns = [], [], []
            for _ in range(args.repeat):
                start, guest, down = tiny_boot(driver, kernel, workdir)
                starts.append(start)
                guests.append(guest)
                teardowns.append(down)
            print(f"tiny guest x{args.repeat}: define+start median {statistics.median(starts):.2f} s, "
                  f"boot-to-poweroff median {statistics.median(guests):.2f} s, "
                  f"teardown median {statistics.median(teardowns):.3f} s")
            if args.scenario:
                from mshare_lab.lab.runner import run_scenario
                from mshare_lab.lab.scenario import GuestShape, Scenario
                from mshare_lab.options import WorkloadSpec
                scenario = Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=32 << 20, clients=10, duration=1),
                                    guest=GuestShape(memory=1 << 30, timeout=600))
                record = run_scenario(scenario, driver=driver, workdir=workdir / "scenario")
                print(f"micro scenario {scenario.scenario_id}: {record.outcome}, wall {record.wall_seconds:.1f} s, "
                      f"guest {record.guest_seconds:.1f} s, overhead {record.overhead_seconds:.2f} s")
            driver.remove_scratch()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
