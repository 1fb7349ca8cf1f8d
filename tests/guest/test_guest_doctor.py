"""mshare-lab doctor: one line per check, what to do when not ok, exit 1 on a required failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mshare_lab.guest.doctor import Check, check_libvirt, run_checks


def test_doctor_cli_on_this_host_is_ready():
    cli = Path(sys.executable).parent / "mshare-lab"
    out = subprocess.run([str(cli), "doctor", "--no-probe"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    names = [line.split(":")[0].split(None, 1)[1] for line in lines[:-1]]
    assert names == ["qemu", "libvirt", "/dev/kvm", "huge pages", "memory", "disk", "lab home", "leftovers"]
    assert all(line[:4] in ("ok  ", "warn", "FAIL") for line in lines[:-1])
    assert all(" -> " in line for line in lines[:-1] if not line.startswith("ok"))
    assert lines[-1].startswith("ready: every required check passed")


def test_an_unreachable_libvirt_fails_with_what_to_do():
    check = check_libvirt("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert not check.ok and check.required
    assert check.line().startswith("FAIL libvirt: cannot connect to libvirt")
    assert check.line().endswith("-> start the daemons: `virtlogd -d; libvirtd -d` (scripts/setup does it)")
    checks = run_checks("qemu+unix:///system?socket=/nonexistent/libvirt-sock", probe=False)
    assert [c.name for c in checks if c.required and not c.ok] == ["libvirt"]


def test_check_lines():
    assert Check("x", True, "fine", "never shown").line() == "ok   x: fine"
    assert Check("x", False, "bad", "do this", required=False).line() == "warn x: bad -> do this"
