"""The stock Debian cloud kernel: the lab's default kernel and every comparison's baseline.

``linux-image-cloud-amd64`` is a metapackage; it is resolved to the real image package
(``apt-cache depends``), downloaded with ``apt-get download`` and unpacked with
``dpkg-deb -x``. The artifact keeps the kernel, its config, System.map and lib/modules
(only disk-image guests load modules; the micro image needs none, see docs/kernel.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import NotFoundError, ToolError
from . import detect, kconfig, store
from .artifact import BZIMAGE, CONFIG, MODULES, SYSTEM_MAP, KernelArtifact, write_metadata
from .progress import Progress, stderr_progress
from .tools import run

METAPACKAGE = "linux-image-cloud-amd64"
#: bump when what fetch_debian keeps or records changes
FETCH_RECIPE = 3


def resolve_package(metapackage: str = METAPACKAGE) -> tuple[str, str]:
    """(real package, candidate version) of a kernel metapackage, from the local apt cache."""
    depends = run(["apt-cache", "depends", metapackage], what=f"apt-cache depends {metapackage}")
    match = re.search(r"Depends:\s*(linux-image-\S+)", depends)
    if not match:
        raise ToolError(f"{metapackage} does not depend on a linux-image package",
                        hint="run `apt-get update` and check the apt sources")
    package = match.group(1)
    policy = run(["apt-cache", "policy", package], what=f"apt-cache policy {package}")
    version = re.search(r"Candidate:\s*(\S+)", policy)
    if not version or version.group(1) == "(none)":
        raise ToolError(f"apt has no candidate version of {package}", hint="run `apt-get update`")
    return package, version.group(1)


# drivers a guest needs: "y" built in, "m" module (needs an initrd or modules), "n" absent
GUEST_DRIVERS = ("SERIAL_8250_CONSOLE", "VIRTIO_PCI", "VIRTIO_BLK", "VIRTIO_NET", "VIRTIO_CONSOLE",
                 "EXT4_FS", "9P_FS", "NET_9P_VIRTIO", "TMPFS", "HUGETLBFS", "MEMCG", "ACPI")


def guest_drivers(config: dict[str, str]) -> dict[str, str]:
    return {name: config.get(f"CONFIG_{name}", "n") for name in GUEST_DRIVERS}


def alias_for(release: str) -> str:
    """'6.1.0-56-cloud-amd64' -> 'debian-6.1'."""
    major_minor = re.match(r"(\d+)\.(\d+)", release)
    if not major_minor:
        raise ToolError(f"unexpected kernel release {release!r}")
    return f"debian-{major_minor.group(1)}.{major_minor.group(2)}"


def content_hash(package: str, version: str) -> str:
    key = json.dumps({"kind": "distribution", "package": package, "version": version,
                      "recipe": FETCH_RECIPE}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def fetch_debian(progress: Progress = stderr_progress) -> KernelArtifact:
    """Register the Debian cloud kernel as ``debian-<major>.<minor>``; a cache hit when present."""
    package, version = resolve_package()
    digest = content_hash(package, version)
    existing = store.find_hash(digest)
    if existing is not None:
        release = json.loads((existing / "metadata.json").read_text())["release"]
        progress(f"kernel: {package} {version} already fetched ({digest[:12]})")
        return store.alias(alias_for(release), digest)
    progress(f"kernel: fetching {package} {version}")
    with tempfile.TemporaryDirectory(prefix="mshare-lab-fetch-") as tmp_name:
        tmp = Path(tmp_name)
        tmp.chmod(0o755)    # apt drops to _apt for downloads and must write here
        run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp, what=f"apt-get download {package}")
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise ToolError(f"apt-get download left {len(debs)} .deb files for {package}")
        deb = debs[0]
        deb_sha = hashlib.sha256(deb.read_bytes()).hexdigest()
        progress(f"kernel: unpacking {deb.name}")
        root = tmp / "root"
        run(["dpkg-deb", "-x", deb, root], what=f"dpkg-deb -x {deb.name}")
        with store.staging(digest) as stage:
            release = _keep_files(root, stage)
            config = kconfig.read_config(stage / CONFIG)
            write_metadata(stage, {
                "name": alias_for(release),
                "kind": "distribution",
                "release": release,
                "source": {"type": "debian-package", "package": package, "version": version,
                           "metapackage": METAPACKAGE, "deb": deb.name, "sha256": deb_sha},
                "patches": [],
                "fragments": [],
                "mechanisms": detect.detect(None, config),
                "guest_drivers": guest_drivers(config),
                "compiler": config.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
                "build_seconds": None,
                "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "content_hash": digest,
            })
    artifact = store.alias(alias_for(release), digest)
    progress(f"kernel: registered {artifact.name} ({release})")
    return artifact


def _keep_files(root: Path, stage: Path) -> str:
    """Copy vmlinuz, config, System.map and lib/modules into the artifact; return the release."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise NotFoundError(f"the package holds {len(kernels)} boot/vmlinuz-* files, expected 1")
    release = kernels[0].name.removeprefix("vmlinuz-")
    shutil.copy2(kernels[0], stage / BZIMAGE)
    shutil.copy2(root / "boot" / f"config-{release}", stage / CONFIG)
    shutil.copy2(root / "boot" / f"System.map-{release}", stage / SYSTEM_MAP)
    for lib in ("lib", "usr/lib"):
        modules = root / lib / "modules" / release
        if modules.is_dir():
            target = stage / MODULES / "lib/modules" / release
            target.parent.mkdir(parents=True)
            shutil.copytree(modules, target, symlinks=True)
            # the package leaves modules.dep to its postinst; modprobe in a guest needs it
            run(["depmod", "-b", stage / MODULES, release], what="depmod")
            break
    return release
