"""The one real kernel build: 6.12 + the marker series + the base fragment, booted under QEMU.

The session fixture ``marker_kernel`` builds it (minutes); every test here reuses it.
The boot is plain qemu-system-x86_64 with software emulation (KVM guests hang on this
machine) and a tiny busybox initramfs made here, which checks what the base fragment
promises and powers the VM off through ACPI.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_helpers import FIXTURES, MARKER, sha256_of
from mshare_lab.kernel import store
from mshare_lab.kernel.build import BuildRequest, build_kernel

pytestmark = [pytest.mark.kernel_build, pytest.mark.slow]

GUEST_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /hp /cg
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o huge=always tmpfs /tmp && echo "CHECK tmpfs-huge ok"
mount -t hugetlbfs none /hp && echo "CHECK hugetlbfs ok"
mount -t cgroup2 none /cg && grep -qw memory /cg/cgroup.controllers && echo "CHECK memcg-v2 ok"
grep -q '^[0-9]' /proc/sys/kernel/shmmax && echo "CHECK sysvipc ok"
[ -e /sys/kernel/mm/transparent_hugepage/shmem_enabled ] && echo "CHECK thp-shmem ok"
grep -q oom_kill /proc/vmstat && echo "CHECK vmstat-oom_kill ok"
echo "frame-on-ttyS1" > /dev/ttyS1 && echo "CHECK ttyS1 ok"
echo "CHECK done"
poweroff -f
"""
EXPECTED_CHECKS = ("tmpfs-huge", "hugetlbfs", "memcg-v2", "sysvipc", "thp-shmem", "vmstat-oom_kill", "ttyS1")


def make_initramfs(directory: Path) -> Path:
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = directory / "root"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin/busybox")
    (root / "init").write_text(GUEST_INIT)
    (root / "init").chmod(0o755)
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing,
                             capture_output=True, check=True).stdout
    initrd = directory / "initrd.gz"
    initrd.write_bytes(gzip.compress(archive, compresslevel=1))
    return initrd


def test_build_metadata_describes_what_was_built(marker_kernel, tarball_sha256):
    artifact = marker_kernel.artifact
    meta = json.loads((artifact.path / "metadata.json").read_text())
    assert meta["schema"] == "mshare-lab/kernel" and meta["kind"] == "built"
    assert re.fullmatch(r"6\.12\.\d+", meta["release"])
    assert meta["source"] == {"kind": "tarball", "location": "/usr/src/linux-source-6.12.tar.xz",
                              "digest": tarball_sha256}
    [series] = meta["patches"]
    assert series["files"][0]["sha256"] == sha256_of(FIXTURES / "marker-series.mbox")
    assert series["units"] == 4
    assert meta["fragments"][0]["path"].endswith("images/kernel/base.config")
    # the stand-in patches (3-4) make the tree look like a page-table sharing series
    assert meta["mechanisms"] == {"shmem": {}, "sysv": {}, "thp": {}, "hugetlb": {},
                                  "msharefs-ioctl": {"abi": "2024"}, "ptshare": {"map_flag": 0x200000}}
    assert meta["compiler"].startswith("gcc") and meta["build_seconds"] > 0
    for name in ("bzImage", ".config", "System.map", "build.log"):
        assert (artifact.path / name).stat().st_size > 0, name
    assert "init/mshare_lab_marker.o" in (artifact.path / "build.log").read_text()
    assert "mm/mshare_lab_standin.o" in (artifact.path / "build.log").read_text()
    assert "CONFIG_VIRTIO_BLK=y" in artifact.config.read_text()
    print(f"\nkernel build (or cache hit) took {marker_kernel.seconds:.1f} s; "
          f"recorded build_seconds {meta['build_seconds']}")


def test_patched_kernel_boots_and_base_fragment_delivers(marker_kernel, tmp_path):
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86 is not installed: run scripts/setup"
    initrd = make_initramfs(tmp_path)
    console, ttys1 = tmp_path / "console.log", tmp_path / "ttyS1.log"
    cmd = [qemu, "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1", "-display", "none", "-monitor", "none",
           "-no-reboot", "-kernel", str(marker_kernel.artifact.bzimage), "-initrd", str(initrd),
           "-append", "console=ttyS0 panic=-1 loglevel=7",
           "-serial", f"file:{console}", "-serial", f"file:{ttys1}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = console.read_text(errors="replace")
    assert MARKER in text, text[-3000:]
    assert f"Linux version {marker_kernel.artifact.release}" in text
    checks = set(re.findall(r"^CHECK (\S+) ok", text, re.MULTILINE))
    assert checks == set(EXPECTED_CHECKS), text[-3000:]
    assert "CHECK done" in text
    assert "frame-on-ttyS1" in ttys1.read_text()
    # poweroff -f ended QEMU by itself through ACPI, not the timeout or a panic
    assert code == 0 and "Kernel panic" not in text


def test_same_inputs_are_a_cache_hit(marker_kernel, tarball):
    request = BuildRequest(source=str(tarball), name="test-marker-6.12-again",
                           patches=(FIXTURES / "marker-series.mbox",))
    lines: list[str] = []
    started = time.monotonic()
    again = build_kernel(request, lines.append)
    seconds = time.monotonic() - started
    assert any("cache hit" in line for line in lines), lines
    assert not any(line.startswith("kernel: make") for line in lines)
    assert again.path == marker_kernel.artifact.path
    assert again.metadata["created"] == marker_kernel.artifact.metadata["created"]
    assert store.get("test-marker-6.12-again").path == again.path
    print(f"\ncache hit took {seconds:.1f} s")


def test_cli_lists_and_shows_the_kernel(marker_kernel):
    cli = [sys.executable, "-m", "mshare_lab.cli", "kernel"]
    listing = subprocess.run([*cli, "list"], capture_output=True, text=True, check=True).stdout
    row = next(line for line in listing.splitlines() if line.startswith("test-marker-6.12 "))
    assert marker_kernel.artifact.release in row and "built" in row and "hugetlb,msharefs-ioctl(2024),ptshare(0x200000),shmem,sysv,thp" in row
    shown = subprocess.run([*cli, "show", "test-marker-6.12"], capture_output=True, text=True, check=True).stdout
    lines = shown.splitlines()
    # the human summary first: release, source, patches with subjects, mechanisms, build, path
    assert lines[0] == "name        test-marker-6.12"
    assert lines[1] == f"release     {marker_kernel.artifact.release}  (built)"
    assert lines[2].startswith("source      tarball /usr/src/linux-source-6.12.tar.xz (")
    assert "              4. mm: test stand-in msharefs and kernel-log trigger" in lines
    assert "  msharefs-ioctl  ioctl ABI 2024" in lines and "  ptshare         MAP_SHARED_PT = 0x200000" in lines
    assert any(line.startswith("build       ") and " s with -j" in line for line in lines)
    assert lines[-1] == f"path        {marker_kernel.artifact.path}"
    as_json = subprocess.run([*cli, "show", "--json", "test-marker-6.12"], capture_output=True, text=True,
                             check=True).stdout
    assert json.loads(as_json)["kind"] == "built"
    missing = subprocess.run([*cli, "show", "no-such-kernel"], capture_output=True, text=True)
    assert missing.returncode == 2 and "test-marker-6.12" in missing.stderr
    assert missing.stderr.count("\n") == 1
