"""Where the lab keeps what it builds and measures.

Root runs use /var/lib/mshare-lab so that the qemu user of qemu:///system can read the
kernels and initramfs images it boots (a path under /root is not traversable for it);
other users get ~/.local/share/mshare-lab and qemu:///session. MSHARE_LAB_HOME overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def lab_home() -> Path:
    env = os.environ.get("MSHARE_LAB_HOME")
    if env:
        home = Path(env)
    elif os.geteuid() == 0:
        home = Path("/var/lib/mshare-lab")
    else:
        home = Path.home() / ".local/share/mshare-lab"
    home.mkdir(parents=True, exist_ok=True)
    # the qemu user must traverse it to reach kernels and images
    try:
        home.chmod(0o755)
    except PermissionError:
        pass
    return home


def kernels_dir() -> Path:
    return _sub("kernels")


def images_dir() -> Path:
    return _sub("images")


def runs_dir() -> Path:
    return _sub("runs")


def keys_dir() -> Path:
    path = _sub("keys")
    path.chmod(0o700)
    return path


def default_results_db() -> Path:
    return lab_home() / "results.sqlite"


def _sub(name: str) -> Path:
    path = lab_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
