"""Real guests through LibvirtDriver.boot(): output captured, and nothing left afterwards."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import libvirt
import pytest

from mshare_lab.errors import LimitError
from mshare_lab.guest import testing
from mshare_lab.guest.domain import Disk, DomainSpec, owner_metadata
from mshare_lab.guest.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.vm

#: TCG on a busy 2-core host: a tiny guest normally powers off in 3-10 s
BOOT_TIMEOUT = 120


@pytest.fixture(scope="module")
def kernel() -> Path:
    return testing.debian_kernel()


@pytest.fixture
def scratch():
    path = testing.lab_scratch()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def driver():
    with LibvirtDriver() as drv:
        yield drv
        drv.remove_scratch()


def _exists(driver: LibvirtDriver, name: str) -> bool:
    try:
        driver.conn.lookupByName(name)
        return True
    except libvirt.libvirtError:
        return False


def _spec(driver, kernel, scratch, initrd, **kw) -> DomainSpec:
    name = driver.new_name()
    return DomainSpec(name=name, memory=256 << 20, vcpus=1, kernel=kernel, initrd=initrd,
                      console_path=scratch / "console.log", serial_path=scratch / "serial.log",
                      cmdline="console=ttyS0 panic=-1", metadata=owner_metadata(driver.run_id, files=(initrd,)), **kw)


def test_boot_captures_console_and_serial_and_removes_domain_and_files(driver, kernel, scratch):
    initrd = testing.tiny_initrd(
        'echo "LA57=$(grep -c -w la57 /proc/cpuinfo)"\n'
        'echo "frames port says hello" > /dev/ttyS1\n'
        'echo GUEST-DONE\npoweroff -f', scratch / "initrd.gz")
    spec = _spec(driver, kernel, scratch, initrd)
    with driver.boot(spec) as guest:
        assert _exists(driver, spec.name)
        assert guest.wait(BOOT_TIMEOUT), guest.tail_console()
        assert guest.end_reason == "shutdown" and not guest.ended_by_infra
        assert 0 < guest.guest_seconds < BOOT_TIMEOUT
        console = guest.console_text()
        assert "Linux version" in console and "GUEST-DONE" in console
        # la57 is masked by default: the guest runs 4-level paging (PGDIR_SIZE 512 GiB)
        assert "LA57=0" in console
        assert guest.serial_text().strip() == "frames port says hello"
    assert not _exists(driver, spec.name)
    assert not initrd.exists(), "files listed in the metadata are removed with the domain"
    assert (scratch / "console.log").exists(), "the console log is an artifact and stays"


def test_disk_and_network_together_start_and_la57_passes_when_unmasked(driver, kernel, scratch):
    disk = scratch / "disk.img"
    disk.write_bytes(b"\0" * (4 << 20))
    disk.chmod(0o666)
    initrd = testing.tiny_initrd('for d in /sys/bus/pci/devices/*; do echo "PCI $(cat $d/vendor):$(cat $d/device)"; done\n'
                                 'echo "LA57=$(grep -c -w la57 /proc/cpuinfo)"\npoweroff -f', scratch / "initrd.gz")
    # also: with the la57 mask lifted, -cpu max offers 5-level paging to the guest
    spec = _spec(driver, kernel, scratch, initrd, disks=(Disk(disk, readonly=True),), network=True,
                 disabled_cpu_features=())
    with driver.boot(spec) as guest:
        assert guest.wait(BOOT_TIMEOUT)
        console = guest.console_text()
    # the Debian cloud kernel has virtio blk/net as modules: look at the PCI functions
    # (transitional virtio ids: 1000 = net, 1001 = block)
    assert "PCI 0x1af4:0x1000" in console and "PCI 0x1af4:0x1001" in console
    assert "LA57=0" not in console and "LA57=" in console


def test_exception_inside_the_block_still_tears_down(driver, kernel, scratch):
    initrd = testing.tiny_initrd("while :; do sleep 1; done", scratch / "initrd.gz")
    spec = _spec(driver, kernel, scratch, initrd)
    with pytest.raises(RuntimeError, match="boom"):
        with driver.boot(spec) as guest:
            assert not guest.wait(2), "this guest never ends by itself"
            run_ids = {driver.run_id}
            assert testing.qemu_processes_of(run_ids)
            raise RuntimeError("boom")
    assert not _exists(driver, spec.name)
    assert not initrd.exists()
    assert not testing.qemu_processes_of(run_ids)


def test_qemu_dying_is_reported_as_an_infra_end(driver, kernel, scratch):
    initrd = testing.tiny_initrd("while :; do sleep 1; done", scratch / "initrd.gz")
    spec = _spec(driver, kernel, scratch, initrd)
    with driver.boot(spec) as guest:
        (pid,) = testing.qemu_processes_of({driver.run_id})
        os.kill(pid, signal.SIGKILL)
        assert guest.wait(30)
        assert guest.ended_by_infra, guest.end_reason
    assert not _exists(driver, spec.name)


def test_a_guest_larger_than_the_host_is_refused_before_anything_is_defined(driver, kernel, scratch):
    initrd = scratch / "unused.gz"
    initrd.write_bytes(b"")
    spec = DomainSpec(name=driver.new_name(), memory=64 << 40, kernel=kernel, console_path=scratch / "c.log",
                      metadata=owner_metadata(driver.run_id, files=(initrd,)))
    with pytest.raises(LimitError, match="cannot give"):
        with driver.boot(spec):
            pytest.fail("must not boot")
    assert not _exists(driver, spec.name)
    assert not initrd.exists()
