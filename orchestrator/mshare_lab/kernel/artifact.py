"""The kernel artifact model: what a built or fetched kernel leaves on disk.

An artifact is a directory holding the boot image, its config, System.map and a
``metadata.json`` that describes it (see docs/kernel.md for the schema). Other areas only
ever see a ``KernelArtifact``; they never read the directory layout themselves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: bump when the metadata.json layout changes incompatibly
METADATA_SCHEMA = "mshare-lab/kernel"
METADATA_VERSION = 1

BZIMAGE = "bzImage"
CONFIG = ".config"
SYSTEM_MAP = "System.map"
BUILD_LOG = "build.log"
METADATA = "metadata.json"
INITRD = "initrd.img"
MODULES = "modules"


@dataclass(frozen=True)
class KernelArtifact:
    name: str                    # the alias it was looked up by (e.g. debian-6.1)
    path: Path                   # the content-addressed directory
    metadata: dict[str, Any]

    @property
    def bzimage(self) -> Path:
        return self.path / BZIMAGE

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def system_map(self) -> Path:
        return self.path / SYSTEM_MAP

    @property
    def initrd(self) -> Path | None:
        """Only present when the kernel came with one (never for lab builds)."""
        path = self.path / INITRD
        return path if path.exists() else None

    @property
    def modules_dir(self) -> Path | None:
        """``lib/modules/<release>`` for disk-image guests; None for all-built-in kernels."""
        path = self.path / MODULES / "lib/modules" / self.release
        return path if path.is_dir() else None

    @property
    def release(self) -> str:
        return self.metadata["release"]

    @property
    def kind(self) -> str:
        return self.metadata["kind"]

    @property
    def mechanisms(self) -> dict[str, dict[str, Any]]:
        return self.metadata.get("mechanisms", {})

    @property
    def content_hash(self) -> str:
        return self.path.name

    @classmethod
    def load(cls, name: str, path: Path) -> "KernelArtifact":
        return cls(name=name, path=path, metadata=json.loads((path / METADATA).read_text()))


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    data = {"schema": METADATA_SCHEMA, "version": METADATA_VERSION, **metadata}
    (directory / METADATA).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
