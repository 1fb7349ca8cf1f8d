"""The Debian guest: a full bookworm system reached over SSH (for Ansible), booted directly
with the kernel and initrd it carries.

Recipe: images/debian/packages and the files under images/debian/rootfs/. The image is
built by debootstrap into a private staging dir, configured from the host (no service runs
in the chroot), written with ``mkfs.ext4 -d`` (no loop mount) and cached by the hash of the
recipe, the suite and the lab key. The staging dir is always removed, mounts inside it first.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..errors import ConfigError, Location, NotFoundError, ToolError
from . import cache, mirror
from .keys import KeyPair, generate, lab_key
from .tool import Progress, run_logged

RECIPE_DIR = paths.REPO_ROOT / "images/debian"
SUITE = "bookworm"
IMAGE_SIZE = "2G"
HOST_KEY_ALIAS = "mshare-lab-guest"
#: root=/dev/vda: the disk is one ext4 filesystem without a partition table;
#: net.ifnames=0 makes the NIC eth0 (the name /etc/network/interfaces configures);
#: panic=-1 with on_reboot=destroy ends the domain on a panic instead of hanging.
CMDLINE = "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1"
#: bump when build() changes what it produces for the same recipe files
RECIPE_VERSION = b"debian-1"


@dataclass(frozen=True)
class DebianImage:
    name: str                 # debian-<hash16>
    hash: str
    path: Path                # the root disk image (base: never boot it writable, use overlay())
    format: str               # "raw" or "qcow2"
    kernel: Path
    initrd: Path
    cmdline: str
    ssh_private_key: Path     # the lab key (0600)
    host_public_key: str      # "ssh-ed25519 AAAA..." of the guest's sshd
    ssh_user: str = "root"
    host_key_alias: str = HOST_KEY_ALIAS

    def known_hosts_line(self, host: str = "127.0.0.1", port: int = 22) -> str:
        """The OpenSSH known_hosts line for the guest reached at host:port."""
        target = host if port == 22 else f"[{host}]:{port}"
        return f"{target} {self.host_public_key}"

    def write_known_hosts(self, path: Path, host: str = "127.0.0.1", port: int = 22) -> Path:
        path.write_text(self.known_hosts_line(host, port) + "\n")
        return path

    def ssh_command(self, port: int, known_hosts: Path, *command: str,
                    host: str = "127.0.0.1", connect_timeout: int = 10) -> list[str]:
        """An ssh argv that logs in with the lab key and checks the guest's host key."""
        return ["ssh", "-p", str(port), "-i", str(self.ssh_private_key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", f"ConnectTimeout={connect_timeout}",
                "-o", "LogLevel=ERROR", f"{self.ssh_user}@{host}", *command]

    def overlay(self, path: Path) -> Path:
        """A qcow2 copy-on-write disk backed by the base image; the caller deletes it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.path),
                            "-F", self.format, str(path)], check=True, capture_output=True, text=True)
        except FileNotFoundError as exc:
            raise ToolError("qemu-img is not installed", hint="install qemu-utils (scripts/setup)") from exc
        except subprocess.CalledProcessError as exc:
            raise ToolError(f"qemu-img create {path} failed: {exc.stderr.strip()}") from exc
        path.chmod(0o644)
        return path


@dataclass(frozen=True)
class Recipe:
    debootstrap_packages: list[str]
    chroot_packages: list[str]
    files: list[Path]          # every recipe file, for the content hash

    @classmethod
    def load(cls, directory: Path = RECIPE_DIR) -> "Recipe":
        pkg_file = directory / "packages"
        groups: dict[str, list[str]] = {"debootstrap": [], "chroot": []}
        section = None
        for lineno, raw in enumerate(pkg_file.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                if section not in groups:
                    raise ConfigError(f"unknown section [{section}]", location=Location(pkg_file, lineno),
                                      hint="use [debootstrap] or [chroot]")
                continue
            if section is None or " " in line:
                raise ConfigError(f"expected one package name under a section, got {line!r}",
                                  location=Location(pkg_file, lineno))
            groups[section].append(line)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        return cls(groups["debootstrap"], groups["chroot"], files)

    def pinned_chroot_packages(self) -> list[str]:
        """``name=version`` of the [chroot] packages as this host's apt would install them:
        the image then carries the very kernel ``kernel fetch debian`` registers, and a new
        Debian kernel release makes a new image."""
        return [f"{name}={_candidate(name)}" for name in self.chroot_packages]

    def hash(self, lab_public_key: str) -> str:
        parts = [RECIPE_VERSION, SUITE.encode(), IMAGE_SIZE.encode(), lab_public_key.encode(),
                 *(p.encode() for p in self.pinned_chroot_packages())]
        for file in self.files:
            parts += [str(file.relative_to(RECIPE_DIR)).encode(), file.read_bytes()]
        return cache.content_hash(parts)


def _candidate(package: str) -> str:
    """The version `apt-get install` would pick on this host (from its apt lists)."""
    try:
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                                check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolError(f"apt-cache policy {package} failed") from exc
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        raise NotFoundError(f"apt has no candidate version of {package}",
                            hint="run `apt-get update` (the image pins what the host's apt offers)")
    return match.group(1)


def build(progress: Progress | None = None, *, force: bool = False) -> DebianImage:
    """The Debian image for the current recipe and lab key, built if not cached."""
    recipe = Recipe.load()
    key = lab_key()
    digest = recipe.hash(key.public_key)
    entry = None if force else cache.lookup("debian", digest)
    if entry:
        _say(progress, f"debian image {entry.name}: cached")
        return _image(entry, key)
    name = f"debian-{digest[:16]}"
    out_dir = paths.images_dir() / name
    _say(progress, f"debian image {name}: building (debootstrap {SUITE}, about 2 minutes)")
    if out_dir.exists():
        shutil.rmtree(out_dir)  # a half-built entry of an interrupted run
    out_dir.mkdir()
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=paths.images_dir()))
    try:
        _build_into(staging, out_dir, recipe, key, progress)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        _remove_staging(staging)
    files = [f"{name}/{p.name}" for p in sorted(out_dir.iterdir())]
    entry = cache.write_manifest("debian", digest, out_dir / "rootfs.img", files,
                                 format="raw", kernel=f"{name}/vmlinuz", initrd=f"{name}/initrd.img",
                                 host_key=f"{name}/ssh_host_ed25519_key.pub", suite=SUITE,
                                 lab_key_fingerprint=key.fingerprint())
    _say(progress, f"debian image {name}: built")
    return _image(entry, key)


def get() -> DebianImage:
    """The cached image of the current recipe, without building (NotFoundError if none)."""
    recipe = Recipe.load()
    key = lab_key()
    entry = cache.lookup("debian", recipe.hash(key.public_key))
    if entry is None:
        raise NotFoundError("the Debian image is not built", hint="run: mshare-lab image build debian")
    return _image(entry, key)


def _image(entry: cache.ImageEntry, key: KeyPair) -> DebianImage:
    base = entry.manifest.parent
    if Path(entry.path).exists() and Path(entry.path).stat().st_mode & 0o077:
        Path(entry.path).chmod(0o600)   # an image built before the host key was kept private
    return DebianImage(
        name=entry.name, hash=entry.hash, path=entry.path, format=entry.extra["format"],
        kernel=base / entry.extra["kernel"], initrd=base / entry.extra["initrd"],
        cmdline=CMDLINE, ssh_private_key=key.private,
        host_public_key=" ".join((base / entry.extra["host_key"]).read_text().split()[:2]))


def _say(progress: Progress | None, message: str) -> None:
    if progress:
        progress(message)


def _build_into(staging: Path, out_dir: Path, recipe: Recipe, key: KeyPair,
                progress: Progress | None) -> None:
    log = out_dir.parent / f"{out_dir.name}.log"
    log.unlink(missing_ok=True)
    root = staging / "root"
    source = mirror.debian_mirror(SUITE)
    _say(progress, f"debootstrap from {source}")
    run_logged(["debootstrap", "--variant=minbase",
                f"--include={','.join(recipe.debootstrap_packages)}", SUITE, str(root), source],
               log=log, label="debootstrap", progress=progress,
               hint="check the apt mirror in /etc/apt/sources.list*")
    # recipe files first: the kernel's postinst builds the initrd from initramfs-tools' config
    _copy_recipe_files(root)
    _install_in_chroot(root, recipe.pinned_chroot_packages(), log, progress)
    _configure(root, key)
    _export_boot_files(root, out_dir)
    _say(progress, f"mkfs.ext4 {IMAGE_SIZE}")
    image = out_dir / "rootfs.img"
    run_logged(["mkfs.ext4", "-q", "-F", "-L", "mshare-root", "-d", str(root), str(image), IMAGE_SIZE],
               log=log, label="mkfs.ext4")
    # it holds the guest's SSH host private key: nobody else reads it (libvirt's dynamic
    # ownership hands the backing file to the qemu user while a guest runs)
    image.chmod(0o600)


def _install_in_chroot(root: Path, packages: list[str], log: Path, progress: Progress | None) -> None:
    """apt-get install inside the chroot with /proc mounted and no service started."""
    if not packages:
        return
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# no daemon starts while the image is built\nexit 101\n")
    policy.chmod(0o755)
    # debootstrap configured the main suite only; security updates carry the current kernel
    (root / "etc/apt/sources.list").write_text("\n".join(mirror.suite_sources(SUITE)) + "\n")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
               "LC_ALL": "C"}
        run_logged(["chroot", str(root), "apt-get", "update", "-q"], log=log,
                   label="apt-get update", progress=progress, env=env)
        _say(progress, f"installing {' '.join(packages)} in the chroot")
        run_logged(["chroot", str(root), "apt-get", "install", "-y", "-q",
                    "--no-install-recommends", *packages],
                   log=log, label="apt-get install", progress=progress, env=env)
        run_logged(["chroot", str(root), "apt-get", "clean"], log=log, label="apt-get clean", env=env)
    finally:
        _unmount_under(root)
        policy.unlink(missing_ok=True)


def _copy_recipe_files(root: Path) -> None:
    files_root = RECIPE_DIR / "rootfs"
    for src in files_root.rglob("*"):
        if src.is_file():
            dst = root / src.relative_to(files_root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            dst.chmod(0o644)


def _configure(root: Path, key: KeyPair) -> None:
    """The lab key, a host key made here, a fresh machine id per boot, quiet units."""
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(key.public_text + "\n")
    (ssh_dir / "authorized_keys").chmod(0o600)
    # the host keys the openssh postinst made in the chroot are replaced by one we know
    for old in (root / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    generate(root / "etc/ssh/ssh_host_ed25519_key", f"root@{HOST_KEY_ALIAS}")
    # systemd creates a machine id at first boot: every overlay boots as a new machine
    (root / "etc/machine-id").write_text("")
    (root / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    # periodic jobs that would compete with measurements on a 2-vCPU guest, and boot-time
    # units that only cost emulated seconds (VGA gettys: the guest has a serial console only)
    for unit in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                 "fstrim.timer", "e2scrub_reap.service", "getty-static.service",
                 "getty@tty1.service"):
        mask = root / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")


def _export_boot_files(root: Path, out_dir: Path) -> None:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ToolError(f"expected one kernel and one initrd in the image's /boot, found "
                        f"{[k.name for k in kernels]} and {[i.name for i in initrds]}")
    shutil.copyfile(kernels[0], out_dir / "vmlinuz")
    shutil.copyfile(initrds[0], out_dir / "initrd.img")
    (out_dir / "release").write_text(kernels[0].name.removeprefix("vmlinuz-") + "\n")
    shutil.copyfile(root / "etc/ssh/ssh_host_ed25519_key.pub", out_dir / "ssh_host_ed25519_key.pub")
    for file in out_dir.iterdir():
        file.chmod(0o644)  # the qemu user boots them


def _mounts_under(root: Path) -> list[Path]:
    """Mount points at or below root, deepest first (from /proc/self/mountinfo)."""
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unmount_under(root: Path) -> None:
    for point in _mounts_under(root):
        # lazy: a process that still holds it must not keep the staging dir alive
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _remove_staging(staging: Path) -> None:
    """Unmount what debootstrap or we left mounted inside, then delete everything."""
    _unmount_under(staging)
    if _mounts_under(staging):
        raise ToolError(f"cannot unmount everything under {staging}; remove it by hand")
    shutil.rmtree(staging, ignore_errors=True)
