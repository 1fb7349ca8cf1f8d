"""newc cpio archives from a staging directory, without root.

GNU cpio writes the archive from a file list (``find . | cpio -o -H newc``); ownership is
forced to root in the archive (``-R 0:0``) so no chown is needed in the staging dir, and
no device node is ever created: the guest's devtmpfs provides them at boot.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

from ..errors import ToolError


def _file_list(staging: Path) -> bytes:
    """Every path under staging, relative, sorted (a stable archive order), NUL-separated."""
    entries: list[str] = []
    for root, dirs, files in os.walk(staging):
        dirs.sort()
        rel_root = os.path.relpath(root, staging)
        for name in sorted(dirs + files):
            entries.append(os.path.normpath(os.path.join(rel_root, name)))
    return b"\0".join(e.encode() for e in entries) + b"\0"


def newc_gz(staging: Path) -> bytes:
    """The gzip-compressed newc cpio archive of staging's contents."""
    try:
        proc = subprocess.run(
            ["cpio", "--create", "--format=newc", "--null", "--quiet", "-R", "0:0"],
            cwd=staging, input=_file_list(staging), capture_output=True, check=True)
    except FileNotFoundError as exc:
        raise ToolError("cpio is not installed", hint="run scripts/setup") from exc
    except subprocess.CalledProcessError as exc:
        raise ToolError(f"cpio failed: {exc.stderr.decode(errors='replace').strip()}") from exc
    # mtime=0: the same inputs give the same bytes
    return gzip.compress(proc.stdout, compresslevel=9, mtime=0)
