"""Bad build inputs stop the build before any compiling, leave the source and the lab clean.

Real: Debian's 6.12 source tarball, GNU patch, Kconfig (make allnoconfig). Each test takes
the time of a private copy plus, for config errors, one allnoconfig (~20 s).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kernel_helpers import FIXTURES, sha256_of
from mshare_lab.errors import ConfigDroppedError, PatchError
from mshare_lab.kernel import store
from mshare_lab.kernel.build import BuildRequest, build_kernel
from mshare_lab.paths import kernels_dir


def _leftovers() -> set[str]:
    """Everything a build may create while running and must remove afterwards."""
    work = kernels_dir() / "work"
    found = {f"work/{p.name}" for p in work.iterdir()} if work.exists() else set()
    found |= {f"by-hash/{p.name}" for p in store.by_hash_dir().glob(".tmp-*")}
    found |= {f"tmp/{p.name}" for p in Path("/tmp").glob("mshare-lab-*")}
    return found


def _build_quietly(request: BuildRequest) -> list[str]:
    lines: list[str] = []
    try:
        build_kernel(request, lines.append)
    finally:
        # the failure must come before make starts compiling
        assert not any(line.startswith("kernel: make -j") for line in lines), lines
    return lines


def test_patch_that_does_not_apply(tarball, tarball_sha256, pristine_612):
    shmem_before = sha256_of(pristine_612 / "mm/shmem.c")
    before = _leftovers()
    request = BuildRequest(source=str(tarball), name="test-bad-patch",
                           patches=(FIXTURES / "marker-series.mbox", FIXTURES / "does-not-apply.patch"))
    with pytest.raises(PatchError) as info:
        _build_quietly(request)
    message = str(info.value)
    assert "does-not-apply.patch" in message
    assert "mm/shmem.c: hunk #1 FAILED at line 1" in message
    assert sha256_of(tarball) == tarball_sha256                         # the user's source
    assert sha256_of(pristine_612 / "mm/shmem.c") == shmem_before       # the lab's cache
    assert "mshare_lab_marker" not in (pristine_612 / "init/Makefile").read_text()
    assert not (pristine_612 / "init/mshare_lab_marker.c").exists()
    assert _leftovers() <= before
    with pytest.raises(Exception):
        store.get("test-bad-patch")


def test_dropped_options_are_named_before_compiling(tarball, tmp_path):
    """Two ways to lose an option: an unmet dependency, and an option stock 6.12 lacks."""
    fragment = tmp_path / "kvm.config"
    fragment.write_text("# KVM needs CONFIG_VIRTUALIZATION, which allnoconfig leaves off\nCONFIG_KVM=y\n")
    before = _leftovers()
    request = BuildRequest(source=str(tarball), name="test-dropped", fragments=(str(fragment), "mshare"))
    with pytest.raises(ConfigDroppedError) as info:
        _build_quietly(request)
    message = str(info.value)
    assert message.startswith("2 config option(s) dropped")
    assert "CONFIG_KVM=y" in message and f"{fragment}:2" in message and "not set" in message
    # the lab's own mshare fragment asks for CONFIG_MSHARE, which stock 6.12 does not have
    assert "CONFIG_MSHARE=y" in message and "mshare.config:3" in message
    assert "CONFIG_SMP" not in message                  # what survived is not blamed
    assert _leftovers() <= before


@pytest.mark.slow
def test_ctrl_c_during_make_leaves_nothing(tarball, tmp_path):
    """SIGINT while make compiles: exit 130, no work dir, no compiler left, nothing registered."""
    fragment = tmp_path / "interrupt.config"
    # a distinct input so this is never a cache hit
    fragment.write_text(f"# interrupted build {time.time_ns()}\nCONFIG_PRINTK_TIME=y\n")
    before = _leftovers()
    cli = [sys.executable, "-m", "mshare_lab.cli", "kernel", "build", "--source", str(tarball),
           "--name", "test-interrupted", "--fragment", str(fragment)]
    proc = subprocess.Popen(cli, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("kernel: make -j"):
                time.sleep(3)                    # let the compilers start
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert any(line.startswith("kernel: make -j") for line in seen), "".join(seen)
    assert proc.returncode == 130, rest
    work_dirs = _leftovers() - before
    assert work_dirs == set()
    leftover_procs = [pid for pid in os.listdir("/proc") if pid.isdigit() and _cmdline_mentions(pid, "work/")
                      and _cmdline_mentions(pid, f"-{proc.pid}/")]
    assert leftover_procs == []
    with pytest.raises(Exception):
        store.get("test-interrupted")


def _cmdline_mentions(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
