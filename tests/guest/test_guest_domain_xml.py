"""DomainSpec -> libvirt XML: structure checks, and libvirt itself accepting the result."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mshare_lab.guest.domain import (METADATA_NS, NIC_PCI_SLOT, QEMU_NS, Disk, DomainSpec, LabMetadata,
                                     PortForward, owner_alive, owner_metadata, process_start_time)

KERNEL = Path("/var/lib/mshare-lab/kernels/k/bzImage")


def spec(**overrides) -> DomainSpec:
    values = dict(name="mshare-lab-test-1", memory=1 << 30, kernel=KERNEL,
                  console_path=Path("/var/lib/mshare-lab/runs/x/console.log"),
                  serial_path=Path("/var/lib/mshare-lab/runs/x/serial.log"),
                  initrd=Path("/var/lib/mshare-lab/scratch/r/initrd.gz"))
    values.update(overrides)
    return DomainSpec(**values)


def parse(s: DomainSpec) -> ET.Element:
    return ET.fromstring(s.to_xml())


def test_tcg_guest_has_maximum_cpu_without_la57_and_ends_on_every_event():
    dom = parse(spec())
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "mshare-lab-test-1"
    assert dom.find("memory").get("unit") == "KiB" and dom.findtext("memory") == str(1 << 20)
    assert dom.findtext("vcpu") == "2"
    cpu = dom.find("cpu")
    assert cpu.get("mode") == "maximum"
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [("disable", "la57")]
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        assert dom.findtext(event) == "destroy"
    assert dom.find("features/acpi") is not None


def test_kvm_guest_passes_the_host_cpu_through():
    cpu = parse(spec(domain_type="kvm")).find("cpu")
    assert cpu.get("mode") == "host-passthrough"


def test_direct_kernel_boot_and_command_line_are_escaped_not_templated():
    cmdline = 'console=ttyS0 x="a b" y=<1>&z'
    dom = parse(spec(cmdline=cmdline))
    assert dom.findtext("os/kernel") == str(KERNEL)
    assert dom.findtext("os/initrd") == "/var/lib/mshare-lab/scratch/r/initrd.gz"
    assert dom.findtext("os/cmdline") == cmdline
    assert parse(spec(initrd=None)).find("os/initrd") is None


def test_two_serial_ports_to_files_and_no_default_device_noise():
    devices = parse(spec()).find("devices")
    serials = devices.findall("serial")
    assert [(s.get("type"), s.find("target").get("port"), s.find("source").get("path")) for s in serials] == [
        ("file", "0", "/var/lib/mshare-lab/runs/x/console.log"),
        ("file", "1", "/var/lib/mshare-lab/runs/x/serial.log")]
    assert devices.find("graphics") is None and devices.find("video") is None
    assert devices.find("input") is None
    assert devices.find("controller[@type='usb']").get("model") == "none"
    assert devices.find("memballoon").get("model") == "none"
    assert len(parse(spec(serial_path=None)).findall("devices/serial")) == 1


def test_hugepage_backing_only_when_asked():
    assert parse(spec()).find("memoryBacking") is None
    assert parse(spec(hugepage_backing=True)).find("memoryBacking/hugepages") is not None


def test_disks_are_virtio_in_order_with_format_and_readonly():
    dom = parse(spec(disks=(Disk(Path("/d/a.qcow2"), "qcow2"), Disk(Path("/d/b.img"), readonly=True))))
    disks = dom.findall("devices/disk")
    assert [(d.find("target").get("dev"), d.find("target").get("bus"), d.find("driver").get("type"),
             d.find("source").get("file"), d.find("readonly") is not None) for d in disks] == [
        ("vda", "virtio", "qcow2", "/d/a.qcow2", False), ("vdb", "virtio", "raw", "/d/b.img", True)]


def test_user_network_forwards_host_ports_on_loopback_only():
    dom = parse(spec(forwards=(PortForward(2222, 22), PortForward(8080, 80))))
    args = [a.get("value") for a in dom.iter(f"{{{QEMU_NS}}}arg")]
    assert args == ["-netdev", "user,id=labnet,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:8080-:80",
                    "-device", f"virtio-net-pci,netdev=labnet,addr={NIC_PCI_SLOT}"]
    assert parse(spec()).find(f"{{{QEMU_NS}}}commandline") is None
    assert parse(spec(network=True)).find(f"{{{QEMU_NS}}}commandline") is not None


def test_metadata_names_the_owner_and_files_and_round_trips():
    meta = LabMetadata(run_id="r1", owner_pid=123, owner_start="456", created=1.5,
                       files=(Path("/x/initrd.gz"), Path("/x/overlay.qcow2")))
    dom = parse(spec(metadata=meta))
    element = dom.find(f"metadata/{{{METADATA_NS}}}lab")
    assert element is not None
    assert LabMetadata.from_xml(ET.tostring(element, encoding="unicode")) == meta


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="domain type"):
        spec(domain_type="xen")
    with pytest.raises(ValueError, match="64 MiB"):
        spec(memory=1 << 20)


def test_owner_liveness_tells_dead_and_reused_pids_apart():
    assert owner_alive(owner_metadata("r"))
    child = subprocess.Popen(["true"])
    child.wait()
    assert not owner_alive(LabMetadata(run_id="r", owner_pid=child.pid))
    # the pid exists (ours) but was started at another time: a reused pid
    assert not owner_alive(LabMetadata(run_id="r", owner_pid=os.getpid(), owner_start="1"))
    assert process_start_time(os.getpid()).isdigit()


@pytest.mark.vm
def test_libvirt_accepts_the_xml_and_keeps_metadata_and_passthrough():
    import libvirt
    from mshare_lab.guest.libvirt_driver import LibvirtDriver
    with LibvirtDriver() as driver:
        name = driver.new_name()
        s = spec(name=name, disks=(Disk(Path("/nonexistent/a.qcow2"), "qcow2"),), forwards=(PortForward(2222),),
                 metadata=owner_metadata(driver.run_id, files=(Path("/nonexistent/f"),)))
        dom = driver.conn.defineXML(s.to_xml())
        try:
            kept = ET.fromstring(dom.XMLDesc(0))
            assert kept.find("cpu").get("mode") == "maximum"
            assert any("hostfwd=tcp:127.0.0.1:2222-:22" in (a.get("value") or "")
                       for a in kept.iter(f"{{{QEMU_NS}}}arg"))
            meta = LabMetadata.from_xml(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS))
            assert meta.run_id == driver.run_id and meta.files == (Path("/nonexistent/f"),)
        finally:
            dom.undefine()
