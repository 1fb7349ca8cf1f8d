"""The content-addressed kernel store under ``<lab home>/kernels``.

Layout::

    kernels/by-hash/<content hash>/   one artifact (bzImage, .config, System.map, metadata.json...)
    kernels/by-name/<name> -> ../by-hash/<content hash>
    kernels/sources/<tarball sha256>/ pristine extractions of source tarballs (build cache)

The hash names the inputs (source identity, patches, fragments, recipe version), so the
same inputs map to the same directory and are never built twice; a name is only an alias.
Artifacts appear atomically: they are assembled in a ``.tmp-*`` directory and renamed.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, NotFoundError
from ..paths import kernels_dir
from .artifact import METADATA, KernelArtifact

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")


def by_hash_dir() -> Path:
    path = kernels_dir() / "by-hash"
    path.mkdir(parents=True, exist_ok=True)
    return path


def by_name_dir() -> Path:
    path = kernels_dir() / "by-name"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sources_dir() -> Path:
    path = kernels_dir() / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ConfigError(f"kernel name {name!r} is not usable",
                          hint="use letters, digits, '.', '_', '+' or '-' (at most 64), e.g. mshare-v3")
    return name


def get(name: str) -> KernelArtifact:
    """The artifact registered under ``name``; NotFoundError listing the known names."""
    link = by_name_dir() / name
    target = link.resolve() if link.is_symlink() else None
    if target is None or not (target / METADATA).is_file():
        known = ", ".join(names()) or "none yet"
        raise NotFoundError(f"no kernel named {name!r} (known: {known})",
                            hint="build one with `mshare-lab kernel build` or `mshare-lab kernel fetch debian`")
    return KernelArtifact.load(name, target)


def names() -> list[str]:
    return sorted(p.name for p in by_name_dir().iterdir()
                  if p.is_symlink() and (p.resolve() / METADATA).is_file())


def list_all() -> list[KernelArtifact]:
    """Every named artifact, sorted by name."""
    return [get(name) for name in names()]


def find_hash(content_hash: str) -> Path | None:
    path = by_hash_dir() / content_hash
    return path if (path / METADATA).is_file() else None


def alias(name: str, content_hash: str) -> KernelArtifact:
    """Point ``name`` at an existing artifact (atomically replacing an older alias)."""
    check_name(name)
    if find_hash(content_hash) is None:
        raise NotFoundError(f"no artifact with content hash {content_hash}")
    link = by_name_dir() / name
    tmp = link.with_name(f".{name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(Path("..") / "by-hash" / content_hash)
    os.replace(tmp, link)
    return get(name)


@contextmanager
def staging(content_hash: str) -> Iterator[Path]:
    """A private directory that becomes ``by-hash/<content_hash>`` if the block succeeds.

    On any failure (including KeyboardInterrupt) it is removed, so a half-built artifact is
    never visible and nothing is left behind.
    """
    final = by_hash_dir() / content_hash
    tmp = by_hash_dir() / f".tmp-{content_hash}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():      # a --force rebuild replaces the old artifact
            old = final.with_name(f".old-{content_hash}-{os.getpid()}")
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
