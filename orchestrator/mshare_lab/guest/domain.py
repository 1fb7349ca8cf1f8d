"""The guest domain as a typed model, rendered to libvirt domain XML.

One ``DomainSpec`` describes everything a lab guest is: RAM, vCPUs, accelerator, a
directly booted kernel (no bootloader, no firmware menus), two serial ports captured to
files (ttyS0 = console, ttyS1 = result frames), optional virtio disks and an optional
user-mode network with host port forwards on 127.0.0.1. The XML is built with
ElementTree so that paths and command lines are always escaped correctly.

Choices worth knowing:

* ``qemu`` (TCG) guests get ``<cpu mode='maximum'>`` (libvirt >= 7.1): QEMU's ``-cpu max``,
  every feature TCG can emulate. That includes LA57 (5-level paging), which would make a
  5-level-capable guest kernel use a 256 TiB PGDIR_SIZE instead of 512 GiB and change
  every mshare alignment. Lab hosts and production machines run 4-level paging, so
  ``la57`` is disabled by default (``disabled_cpu_features``).
* The network is QEMU's user-mode (slirp) stack through ``<qemu:commandline>``: libvirt
  9.0 only offers port forwards with the passt backend, and passt is not packaged here.
  It needs no bridge, no root-owned tap device and no firewall change.
* Default devices libvirt would add (USB controller, memory balloon) are switched off:
  they cost boot time and add noise to the guest's memory accounting.
* ``<metadata>`` carries an ``mshare-lab`` element (run id, owner pid and its start time,
  creation time, files to delete) so ``gc`` can tell which leftovers belong to a dead run.
"""

from __future__ import annotations

import os
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

#: XML namespace of the lab's <metadata> element
METADATA_NS = "https://mshare-lab.invalid/xmlns/domain/1"
METADATA_PREFIX = "mshare-lab"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DOMAIN_PREFIX = "mshare-lab-"

DOMAIN_TYPES = ("kvm", "qemu")
#: PCI slot of the passthrough NIC. libvirt does not see a <qemu:commandline> device and
#: would hand its slot (2, the first free one) to the first virtio disk as well; QEMU then
#: refuses to start. Slot 0x1e is one libvirt assigns last.
NIC_PCI_SLOT = "0x1e"


@dataclass(frozen=True)
class Disk:
    path: Path
    format: str = "raw"          # raw | qcow2
    readonly: bool = False


@dataclass(frozen=True)
class PortForward:
    host_port: int               # on 127.0.0.1
    guest_port: int = 22


@dataclass(frozen=True)
class LabMetadata:
    """What gc needs to know about a domain's owner; stored in the domain's <metadata>."""

    run_id: str
    owner_pid: int
    owner_start: str = ""        # /proc/<pid>/stat start time: tells a reused pid apart
    created: float = 0.0         # unix time
    files: tuple[Path, ...] = () # deleted with the domain (overlays, per-run initrd)

    def to_element(self) -> ET.Element:
        root = ET.Element(f"{{{METADATA_NS}}}lab")
        ET.SubElement(root, f"{{{METADATA_NS}}}run").text = self.run_id
        owner = ET.SubElement(root, f"{{{METADATA_NS}}}owner")
        owner.set("pid", str(self.owner_pid))
        owner.set("start", self.owner_start)
        ET.SubElement(root, f"{{{METADATA_NS}}}created").text = f"{self.created:.3f}"
        for path in self.files:
            ET.SubElement(root, f"{{{METADATA_NS}}}file").text = str(path)
        return root

    @classmethod
    def from_xml(cls, text: str) -> "LabMetadata":
        """Parse the element as libvirt returns it (``virDomain.metadata``)."""
        root = ET.fromstring(text)

        def child(tag: str) -> ET.Element | None:
            # libvirt keeps the namespace; accept the bare tag too for hand-written XML
            # (an Element without children is falsy, hence no `or` here)
            found = root.find(f"{{{METADATA_NS}}}{tag}")
            return found if found is not None else root.find(tag)

        def children(tag: str) -> list[ET.Element]:
            return root.findall(f"{{{METADATA_NS}}}{tag}") + root.findall(tag)

        run = child("run")
        owner = child("owner")
        created = child("created")
        return cls(
            run_id=(run.text or "") if run is not None else "",
            owner_pid=int(owner.get("pid", "0")) if owner is not None else 0,
            owner_start=owner.get("start", "") if owner is not None else "",
            created=float(created.text or 0) if created is not None else 0.0,
            files=tuple(Path(f.text) for f in children("file") if f.text),
        )


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory: int                              # bytes of guest RAM
    kernel: Path
    console_path: Path                       # ttyS0 captured here
    serial_path: Path | None = None          # ttyS1 (result frames) captured here
    initrd: Path | None = None
    # appended to ``initrd`` on the host (HostFiles.place): the micro guest's scenario env
    initrd_tail: bytes = b""
    cmdline: str = "console=ttyS0 panic=-1"
    vcpus: int = 2
    domain_type: str = "qemu"                # kvm | qemu (TCG)
    hugepage_backing: bool = False           # back guest RAM with host huge pages
    disks: tuple[Disk, ...] = ()
    forwards: tuple[PortForward, ...] = ()   # non-empty -> user-mode network
    network: bool = False                    # user-mode network even without forwards
    disabled_cpu_features: tuple[str, ...] = ("la57",)
    machine: str = "pc"
    metadata: LabMetadata | None = None

    def __post_init__(self) -> None:
        if self.domain_type not in DOMAIN_TYPES:
            raise ValueError(f"domain type {self.domain_type!r} is not one of {DOMAIN_TYPES}")
        if self.memory < (64 << 20):
            raise ValueError(f"guest memory {self.memory} bytes is below 64 MiB")
        if self.vcpus < 1:
            raise ValueError("a guest needs at least one vCPU")
        if len(self.disks) > 26:
            raise ValueError("at most 26 virtio disks (vda..vdz)")

    @property
    def has_network(self) -> bool:
        return self.network or bool(self.forwards)

    def to_xml(self) -> str:
        ET.register_namespace("qemu", QEMU_NS)
        ET.register_namespace(METADATA_PREFIX, METADATA_NS)
        dom = ET.Element("domain", type=self.domain_type)
        ET.SubElement(dom, "name").text = self.name
        if self.metadata is not None:
            ET.SubElement(dom, "metadata").append(self.metadata.to_element())
        ET.SubElement(dom, "memory", unit="KiB").text = str(self.memory // 1024)
        ET.SubElement(dom, "currentMemory", unit="KiB").text = str(self.memory // 1024)
        if self.hugepage_backing:
            ET.SubElement(ET.SubElement(dom, "memoryBacking"), "hugepages")
        ET.SubElement(dom, "vcpu", placement="static").text = str(self.vcpus)
        self._os(dom)
        ET.SubElement(ET.SubElement(dom, "features"), "acpi")
        self._cpu(dom)
        ET.SubElement(dom, "clock", offset="utc")
        for event in ("on_poweroff", "on_reboot", "on_crash"):
            # every way the guest ends is the end of the run
            ET.SubElement(dom, event).text = "destroy"
        self._devices(dom)
        if self.has_network:
            self._user_network(dom)
        ET.indent(dom)
        return ET.tostring(dom, encoding="unicode")

    def _os(self, dom: ET.Element) -> None:
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine=self.machine).text = "hvm"
        ET.SubElement(os_el, "kernel").text = str(self.kernel)
        if self.initrd is not None:
            ET.SubElement(os_el, "initrd").text = str(self.initrd)
        ET.SubElement(os_el, "cmdline").text = self.cmdline

    def _cpu(self, dom: ET.Element) -> None:
        # kvm: the host CPU as is; TCG: everything QEMU can emulate (-cpu max)
        mode = "host-passthrough" if self.domain_type == "kvm" else "maximum"
        cpu = ET.SubElement(dom, "cpu", mode=mode)
        if self.domain_type == "qemu":
            cpu.set("migratable", "off")
        for feature in self.disabled_cpu_features:
            ET.SubElement(cpu, "feature", policy="disable", name=feature)

    def _devices(self, dom: ET.Element) -> None:
        devices = ET.SubElement(dom, "devices")
        for index, disk in enumerate(self.disks):
            el = ET.SubElement(devices, "disk", type="file", device="disk")
            ET.SubElement(el, "driver", name="qemu", type=disk.format)
            ET.SubElement(el, "source", file=str(disk.path))
            ET.SubElement(el, "target", dev="vd" + chr(ord("a") + index), bus="virtio")
            if disk.readonly:
                ET.SubElement(el, "readonly")
        serials = [self.console_path] + ([self.serial_path] if self.serial_path else [])
        for port, path in enumerate(serials):
            el = ET.SubElement(devices, "serial", type="file")
            ET.SubElement(el, "source", path=str(path), append="off")
            ET.SubElement(el, "target", port=str(port))
        # no USB controller, no balloon: nothing the lab does not use
        ET.SubElement(devices, "controller", type="usb", model="none")
        ET.SubElement(devices, "memballoon", model="none")

    def _user_network(self, dom: ET.Element) -> None:
        netdev = "user,id=labnet"
        for fwd in self.forwards:
            netdev += f",hostfwd=tcp:127.0.0.1:{fwd.host_port}-:{fwd.guest_port}"
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in ("-netdev", netdev, "-device", f"virtio-net-pci,netdev=labnet,addr={NIC_PCI_SLOT}"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)


def domain_name(run_id: str, index: int) -> str:
    return f"{DOMAIN_PREFIX}{run_id}-{index}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (the kernel picks it; QEMU binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat, or '' when the process does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # the command name may contain spaces and parentheses: split after the last ')'
    return stat.rsplit(")", 1)[1].split()[19]


def owner_metadata(run_id: str, files: tuple[Path, ...] = ()) -> LabMetadata:
    """Metadata naming this process as the owner."""
    pid = os.getpid()
    return LabMetadata(run_id=run_id, owner_pid=pid, owner_start=process_start_time(pid),
                       created=time.time(), files=files)


def owner_alive(meta: LabMetadata) -> bool:
    if meta.owner_pid <= 0:
        return False
    start = process_start_time(meta.owner_pid)
    return bool(start) and (not meta.owner_start or start == meta.owner_start)
