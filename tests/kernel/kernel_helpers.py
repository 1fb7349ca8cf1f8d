"""Constants and helpers the kernel tests import (a uniquely named module: every test
folder has a conftest.py, so `from conftest import` would depend on collection order)."""

from __future__ import annotations

import hashlib
from pathlib import Path

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
FIXTURES = Path(__file__).parent / "fixtures"
MARKER = "MSHARE-LAB-TEST-MARKER"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
