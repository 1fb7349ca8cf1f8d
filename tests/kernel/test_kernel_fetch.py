"""The stock Debian cloud kernel, fetched for real with apt-get download + dpkg-deb."""

from __future__ import annotations

import re

from mshare_lab.kernel import fetch, store


def test_fetch_debian_registers_the_cloud_kernel_idempotently():
    first_lines: list[str] = []
    artifact = fetch.fetch_debian(first_lines.append)
    assert re.fullmatch(r"6\.1\.0-\d+-cloud-amd64", artifact.release)
    assert artifact.name == "debian-6.1" and artifact.kind == "distribution"
    assert artifact.bzimage.stat().st_size > 5_000_000
    assert artifact.bzimage.read_bytes()[0x202:0x206] == b"HdrS"       # an x86 boot image
    assert artifact.config.read_text().count("CONFIG_SERIAL_8250_CONSOLE=y") == 1
    # Debian ships a stub System.map (the real one is in the -dbg package): kept as shipped
    assert (artifact.path / "System.map").is_file()
    assert artifact.modules_dir is not None and (artifact.modules_dir / "modules.dep").is_file()
    meta = artifact.metadata
    assert meta["source"]["package"] == f"linux-image-{artifact.release}"
    assert len(meta["source"]["sha256"]) == 64
    assert set(artifact.mechanisms) == {"shmem", "sysv", "thp", "hugetlb"}
    # the micro image depends on these being built in; virtio disks need modules
    assert meta["guest_drivers"]["SERIAL_8250_CONSOLE"] == "y" and meta["guest_drivers"]["TMPFS"] == "y"

    again_lines: list[str] = []
    again = fetch.fetch_debian(again_lines.append)
    assert again.path == artifact.path and again.metadata["created"] == meta["created"]
    assert any("already fetched" in line for line in again_lines)
    assert store.get("debian-6.1").path == artifact.path
