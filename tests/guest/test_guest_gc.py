"""gc: a run killed with SIGKILL leaves a definition and files; gc removes exactly those."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import libvirt
import pytest

from mshare_lab.guest import testing
from mshare_lab.guest.domain import DomainSpec, owner_metadata
from mshare_lab.guest.gc import gc
from mshare_lab.guest.libvirt_driver import LibvirtDriver, scratch_root

pytestmark = pytest.mark.vm

OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mshare_lab.guest import testing
    from mshare_lab.guest.domain import DomainSpec, owner_metadata
    from mshare_lab.guest.libvirt_driver import LibvirtDriver
    work = Path(sys.argv[1])
    driver = LibvirtDriver()
    initrd = testing.tiny_initrd("while :; do sleep 1; done", driver.scratch_dir() / "hang.gz")
    extra = work / "per-run-file"
    extra.write_text("x")
    spec = DomainSpec(name=driver.new_name(), memory=256 << 20, vcpus=1, kernel=testing.debian_kernel(),
                      initrd=initrd, console_path=work / "console.log",
                      metadata=owner_metadata(driver.run_id, files=(initrd, extra)))
    with driver.boot(spec):
        print(spec.name, driver.run_id, flush=True)
        time.sleep(600)
""")


def _state(conn, name):
    try:
        return conn.lookupByName(name).isActive()
    except libvirt.libvirtError:
        return None


def test_gc_removes_the_leftovers_of_a_killed_owner_and_keeps_live_ones(tmp_path):
    testing.debian_kernel()   # fetch outside the child's timing
    work = testing.lab_scratch()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(work)], stdout=subprocess.PIPE, text=True)
    try:
        name, run_id = owner.stdout.readline().split()
        owner.send_signal(signal.SIGKILL)   # no finally runs: the leftovers gc exists for
        owner.wait(timeout=30)
        with LibvirtDriver() as driver:
            # AUTODESTROY: libvirtd killed the guest when the owner's connection went away
            deadline = time.monotonic() + 30
            while _state(driver.conn, name) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _state(driver.conn, name) == 0, "defined but no longer running"
            assert not testing.qemu_processes_of({run_id})
            assert (work / "per-run-file").exists() and (scratch_root() / run_id).is_dir()

            # a domain whose owner is alive (this test) must survive gc
            mine = driver.new_name()
            driver.conn.defineXML(DomainSpec(name=mine, memory=128 << 20, kernel=testing.debian_kernel(),
                                             console_path=work / "mine.log",
                                             metadata=owner_metadata(driver.run_id)).to_xml())
            try:
                report = gc(driver=driver)
                assert name in report.domains
                assert mine in report.kept and mine not in report.domains
                assert _state(driver.conn, name) is None
                assert not (work / "per-run-file").exists()
                assert scratch_root() / run_id in report.scratch_dirs
                assert not (scratch_root() / run_id).exists()
            finally:
                driver.teardown(mine)
    finally:
        if owner.poll() is None:
            owner.kill()
        shutil.rmtree(work, ignore_errors=True)


def test_gc_cli_reports_what_it_did():
    out = subprocess.run([str(Path(sys.executable).parent / "mshare-lab"), "gc"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "removed" in out.stdout and "domain(s)" in out.stdout
