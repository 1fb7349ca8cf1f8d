"""Content-addressed image entries under paths.images_dir().

Each built image is ``<images>/<kind>-<hash16>...`` plus a ``<kind>-<hash16>.json``
manifest (kind, hash, created, files). The manifest is written last, so its presence
means the entry is complete; a crash mid-build leaves no manifest and the entry is
rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .. import paths


def content_hash(parts: list[bytes]) -> str:
    """sha256 over length-prefixed parts (so part boundaries cannot collide)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def file_digest(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


@dataclass(frozen=True)
class ImageEntry:
    kind: str            # "micro" or "debian"
    hash: str
    path: Path           # the main file (initramfs or disk image)
    created: float       # epoch seconds
    manifest: Path
    extra: dict

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.hash[:16]}"

    @property
    def size(self) -> int:
        """Bytes on disk of every file of the entry (sparse disk images count what they use)."""
        total = 0
        for rel in self.extra.get("files", [self.path.name]):
            file = self.manifest.parent / rel
            if file.exists():
                total += file.stat().st_blocks * 512
        return total


def manifest_path(kind: str, digest: str) -> Path:
    return paths.images_dir() / f"{kind}-{digest[:16]}.json"


def write_manifest(kind: str, digest: str, main: Path, files: list[str], **extra) -> ImageEntry:
    target = manifest_path(kind, digest)
    doc = {"kind": kind, "hash": digest, "path": str(main.relative_to(target.parent)), "created": time.time(),
           "files": files, **extra}
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(target)
    return load(target)


def load(manifest: Path) -> ImageEntry:
    doc = json.loads(manifest.read_text())
    return ImageEntry(kind=doc["kind"], hash=doc["hash"], path=manifest.parent / doc["path"],
                      created=doc["created"], manifest=manifest, extra=doc)


def lookup(kind: str, digest: str) -> ImageEntry | None:
    """The complete entry for these inputs, or None (missing or half-written)."""
    manifest = manifest_path(kind, digest)
    if not manifest.exists():
        return None
    try:
        entry = load(manifest)
    except (ValueError, KeyError):
        return None
    return entry if entry.path.exists() else None


def list_all() -> list[ImageEntry]:
    entries = []
    for manifest in sorted(paths.images_dir().glob("*.json")):
        try:
            entries.append(load(manifest))
        except (ValueError, KeyError):
            continue
    return sorted(entries, key=lambda e: e.created)


def remove(entry: ImageEntry) -> None:
    """Delete an entry: manifest first, so a half-deleted entry is never taken for complete."""
    entry.manifest.unlink(missing_ok=True)
    for rel in entry.extra.get("files", []):
        (entry.manifest.parent / rel).unlink(missing_ok=True)
    folder = entry.manifest.parent / entry.name
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
    entry.manifest.with_suffix(".log").unlink(missing_ok=True)


def prune(keep: int = 1) -> list[ImageEntry]:
    """Remove all but the newest ``keep`` entries of each kind; returns what was removed."""
    removed = []
    for kind in {e.kind for e in list_all()}:
        entries = [e for e in list_all() if e.kind == kind]   # oldest first
        for entry in entries[:max(0, len(entries) - keep)]:
            remove(entry)
            removed.append(entry)
    return removed
