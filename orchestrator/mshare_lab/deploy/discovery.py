"""Find running full guests: lab domains that carry an SSH element in their <metadata>.

``full_guest`` adds the element when a guest boots (next to the guest area's own
``mshare-lab`` element, in a namespace of its own): where its port forward listens and
which key and known_hosts file reach it. ``mshare-lab ssh`` and ``exec`` read it back, so
they work from any shell while a run is going on.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from ..errors import NotFoundError, ProvisionError
from ..guest.domain import DOMAIN_PREFIX
from ..guest.libvirt_driver import default_uri
from .target import SshTarget

SSH_METADATA_NS = "https://mshare-lab.invalid/xmlns/ssh/1"
SSH_METADATA_KEY = "mshare-lab-ssh"


def to_xml(target: SshTarget) -> str:
    el = ET.Element("ssh", host=target.host, port=str(target.port), user=target.user,
                    key=str(target.key), known_hosts=str(target.known_hosts))
    return ET.tostring(el, encoding="unicode")


def from_xml(name: str, text: str) -> SshTarget:
    el = ET.fromstring(text)
    return SshTarget(name=name, host=el.get("host", "127.0.0.1"), port=int(el.get("port", "0")),
                     user=el.get("user", "root"), key=Path(el.get("key", "")),
                     known_hosts=Path(el.get("known_hosts", "")))


def annotate(domain: libvirt.virDomain, target: SshTarget) -> None:
    """Record how to reach the running guest in its live definition."""
    try:
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, to_xml(target), SSH_METADATA_KEY,
                           SSH_METADATA_NS, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as exc:
        raise ProvisionError(f"cannot record the SSH address of {target.name} in libvirt: "
                             f"{exc.get_error_message()}") from exc


def running_targets(uri: str | None = None) -> list[SshTarget]:
    """Every running lab guest reachable over SSH, sorted by name."""
    uri = uri or default_uri()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise ProvisionError(f"cannot connect to libvirt at {uri}: {exc.get_error_message()}") from exc
    try:
        targets = []
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            if not dom.name().startswith(DOMAIN_PREFIX):
                continue
            try:
                text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, SSH_METADATA_NS)
            except libvirt.libvirtError:
                continue   # a micro guest: no SSH
            try:
                targets.append(from_xml(dom.name(), text))
            except (ET.ParseError, ValueError):
                continue
        return sorted(targets, key=lambda t: t.name)
    finally:
        conn.close()


def find(name: str, uri: str | None = None) -> SshTarget:
    """A running guest by its domain name, or by a unique part of it (e.g. its run id)."""
    targets = running_targets(uri)
    exact = [t for t in targets if t.name == name]
    if exact:
        return exact[0]
    partial = [t for t in targets if name in t.name]
    if len(partial) == 1:
        return partial[0]
    running = ", ".join(t.name for t in targets) or "none"
    if partial:
        raise NotFoundError(f"'{name}' matches several running guests: {', '.join(t.name for t in partial)}",
                            hint="give the full domain name")
    raise NotFoundError(f"no running full guest named '{name}' (running: {running})",
                        hint="full guests run during `image: debian` scenarios; see `virsh list`")
