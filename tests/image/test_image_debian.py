"""The Debian guest image: recipe parsing, mirror discovery, a real build and an SSH boot."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError
from mshare_lab.guest.domain import Disk, DomainSpec, PortForward, free_port, owner_metadata
from mshare_lab.image import debian, mirror


def test_mirror_from_deb822_and_one_line_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("MSHARE_LAB_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    assert mirror.debian_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    # a one-line entry in sources.list comes first
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://local.example/debian bookworm main\n")
    assert mirror.debian_mirror("bookworm", tmp_path) == "http://local.example/debian"
    with pytest.raises(ConfigError, match="no apt source for Debian trixie"):
        mirror.debian_mirror("trixie", tmp_path)
    monkeypatch.setenv("MSHARE_LAB_DEBIAN_MIRROR", "http://override.example/debian")
    assert mirror.debian_mirror("trixie", tmp_path) == "http://override.example/debian"


def test_guest_sources_follow_the_host_suite_family(tmp_path, monkeypatch):
    monkeypatch.delenv("MSHARE_LAB_DEBIAN_MIRROR", raising=False)
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://s.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm-backports trixie\n")
    assert mirror.suite_sources("bookworm", tmp_path) == [
        "deb http://m.example/debian bookworm main",
        "deb http://m.example/debian bookworm-updates main",
        "deb http://s.example/debian-security bookworm-security main"]


def test_recipe_errors_name_file_and_line(tmp_path):
    (tmp_path / "packages").write_text("[debootstrap]\npython3\n[extras]\nvim\n")
    with pytest.raises(ConfigError, match=r"packages:3: unknown section \[extras\]"):
        debian.Recipe.load(tmp_path)
    (tmp_path / "packages").write_text("# comment\nopenssh-server\n")
    with pytest.raises(ConfigError, match="packages:2: expected one package name under a section"):
        debian.Recipe.load(tmp_path)


def test_the_real_recipe_hashes_by_content():
    recipe = debian.Recipe.load()
    assert "openssh-server" in recipe.debootstrap_packages
    assert recipe.chroot_packages == ["linux-image-cloud-amd64"]
    # pinned to what the host's apt offers, the same version `kernel fetch debian` downloads
    [pinned] = recipe.pinned_chroot_packages()
    assert re.fullmatch(r"linux-image-cloud-amd64=\d+\.\d+\.\d+-\S+", pinned)
    assert recipe.hash("ssh-ed25519 AAAA1") != recipe.hash("ssh-ed25519 AAAA2")
    assert recipe.hash("ssh-ed25519 AAAA1") == debian.Recipe.load().hash("ssh-ed25519 AAAA1")


@pytest.fixture(scope="module")
def image() -> debian.DebianImage:
    started = time.monotonic()
    img = debian.build(lambda line: print(f"  {line}", flush=True))
    print(f"debian image ready in {time.monotonic() - started:.1f} s")
    return img


def _ssh(img: debian.DebianImage, port: int, known_hosts: Path, *command: str,
         timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(img.ssh_command(port, known_hosts, *command, connect_timeout=10),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.vm
@pytest.mark.slow
def test_debian_guest_boots_to_ssh_with_checked_host_key(image, driver, debian_kernel, tmp_path):
    images = image.path.parent
    assert image.kernel.exists() and image.initrd.exists()
    assert oct(image.ssh_private_key.stat().st_mode & 0o777) == "0o600"
    # the disk image holds the guest's SSH host private key: readable by its owner only
    assert image.path.stat().st_mode & 0o077 == 0, oct(image.path.stat().st_mode)
    base_stamp = image.path.stat().st_mtime_ns
    release = (images / "release").read_text().strip()
    # the image carries the stock kernel artifact's release, so either boots with its modules
    assert release == debian_kernel.release

    overlay = image.overlay(driver.scratch_dir() / "debian-test.qcow2")
    port = free_port()
    spec = DomainSpec(name=driver.new_name(), memory=2 << 30, vcpus=2, kernel=image.kernel,
                      initrd=image.initrd, cmdline=image.cmdline,
                      console_path=tmp_path / "console.log",
                      disks=(Disk(overlay, "qcow2"),), forwards=(PortForward(port, 22),),
                      metadata=owner_metadata(driver.run_id, files=(overlay,)))
    known_hosts = image.write_known_hosts(tmp_path / "known_hosts", port=port)
    wrong_hosts = tmp_path / "wrong_known_hosts"
    wrong_hosts.write_text(f"[127.0.0.1]:{port} ssh-ed25519 "
                           "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq7DTaPn3a4d8Gh7gS0Ce0DRTDHckyeNr1pX\n")
    started = time.monotonic()
    with driver.boot(spec) as guest:
        login = None
        while time.monotonic() - started < 420 and not guest.poll():
            result = _ssh(image, port, known_hosts, "uname", "-r")
            if result.returncode == 0:
                login = time.monotonic() - started
                break
            time.sleep(3)
        assert login is not None, f"no SSH login; console:\n{guest.tail_console(60)}"
        print(f"debian guest: SSH login {login:.1f} s after start")
        assert result.stdout.strip() == release

        # the host key is really checked: a different recorded key refuses the login
        refused = _ssh(image, port, wrong_hosts, "true")
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr
        # and keys only: no password prompt offered
        auth = _ssh(image, port, known_hosts, "sshd", "-T")
        assert "passwordauthentication no" in auth.stdout
        assert "eth0" in _ssh(image, port, known_hosts, "ip", "-o", "-4", "addr").stdout

        # --force: no orderly stop of every unit (minutes on a busy emulated guest), but
        # filesystems are still unmounted and the machine really powers off
        _ssh(image, port, known_hosts, "systemctl", "poweroff", "--force")
        assert guest.wait(180), "guest did not power off"
        print(f"debian guest: powered off {time.monotonic() - started:.1f} s after start")
    # nothing left: domain gone, overlay deleted, base image untouched
    assert not [n for n, _m, _a in driver.lab_domains() if n == spec.name]
    assert not overlay.exists()
    assert image.path.stat().st_mtime_ns == base_stamp


@pytest.mark.slow
def test_interrupted_build_leaves_nothing_behind(tmp_path):
    """Ctrl-C in the middle of debootstrap: no staging dir, no mount, no process left."""
    home = tmp_path / "lab"
    env = {**os.environ, "MSHARE_LAB_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "mshare_lab.cli", "image", "build", "debian"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        images = home / "images"
        deadline = time.monotonic() + 300
        # interrupt at the worst moment: debootstrap has mounted proc inside the chroot
        while time.monotonic() < deadline and proc.poll() is None:
            if str(home) in Path("/proc/self/mountinfo").read_text():
                break
            time.sleep(0.5)
        assert str(home) in Path("/proc/self/mountinfo").read_text(), "debootstrap never mounted"
        assert list(images.glob(".debian-*/root"))
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert not list(images.glob(".debian-*")), "staging dir left behind"
    assert not list(images.glob("debian-*.json")), "a manifest for a build that never finished"
    assert not [d for d in images.glob("debian-*") if d.is_dir()], "half-built image left"
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(home) not in mounts
    leftovers = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"processes left: {leftovers}"
