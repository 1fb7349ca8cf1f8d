"""Kernel sources: what identifies them, and a private copy to patch and build in.

The user's source is never written to. A tarball is extracted once into a pristine cache
keyed by its sha256 (extracting 150 MB of .tar.xz costs ~30 s; a hard-link copy of the
cache costs ~2 s) and every build hard-links that cache into its own work directory.
Hard links are safe because patches break the link of every file they touch before
writing (patches.py) and the build is out of tree (``make O=``), so nothing writes
through a link. A directory is copied (reflink when the filesystem can); a git
repository is cloned with ``--shared`` (objects borrowed, its .git untouched) and
checked out at the resolved commit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConfigError, NotFoundError, ToolError
from . import store
from .progress import Progress
from .tools import run

_TARBALL_RE = re.compile(r"\.tar(\.(xz|gz|bz2|zst))?$|\.tgz$")


@dataclass(frozen=True)
class SourceIdentity:
    """What makes two sources the same for the artifact cache."""

    kind: str                 # "tarball" | "directory" | "git"
    location: str             # absolute path or URL as given
    digest: str               # tarball sha256, git commit, or directory fingerprint
    ref: str | None = None    # the git ref as the user wrote it

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _is_url(text: str) -> bool:
    return bool(re.match(r"^(https?|git|ssh|file)://|^[\w.-]+@[\w.-]+:", text))


def identify(source: str, ref: str | None = None) -> SourceIdentity:
    """Classify SRC and compute its identity; UserError when it is none of the kinds."""
    if _is_url(source):
        return SourceIdentity("git", source, _remote_commit(source, ref or "HEAD"), ref or "HEAD")
    path = Path(source).expanduser().resolve()
    if not path.exists():
        raise NotFoundError(f"kernel source {source} does not exist",
                            hint="pass a kernel source directory, a linux-*.tar.xz, or a git repository with --ref")
    if path.is_file():
        if not _TARBALL_RE.search(path.name):
            raise ConfigError(f"kernel source {source} is a file but not a .tar[.xz|.gz|.bz2|.zst] tarball")
        if ref:
            raise ConfigError("--ref only applies to git repositories", hint=f"drop --ref for {source}")
        return SourceIdentity("tarball", str(path), file_sha256(path))
    if ref:
        if not (path / ".git").exists():
            raise ConfigError(f"--ref {ref} given but {source} is not a git repository")
        commit = _local_commit(path, ref)
        if not commit:
            raise NotFoundError(f"git ref {ref!r} not found in {source}", hint="check `git -C SRC log --oneline REF`")
        return SourceIdentity("git", str(path), commit, ref)
    if not (path / "Makefile").is_file() or not (path / "Kconfig").is_file():
        raise ConfigError(f"{source} does not look like a kernel source tree (no Makefile/Kconfig at its top)")
    return SourceIdentity("directory", str(path), directory_fingerprint(path))


def _local_commit(repo: Path, ref: str) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def _remote_commit(url: str, ref: str) -> str:
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    listing = run(["git", "ls-remote", url, ref, f"{ref}^{{}}"], what=f"git ls-remote {url}")
    lines = [line.split() for line in listing.splitlines() if line.strip()]
    if not lines:
        raise NotFoundError(f"git ref {ref!r} not found at {url}")
    peeled = [sha for sha, name in lines if name.endswith("^{}")]
    return (peeled or [lines[0][0]])[0]


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def directory_fingerprint(path: Path) -> str:
    """Hash of every file's path, size and mtime: changes when any file is edited.

    Hashing the contents of a 1.4 GB tree would cost more than the cache saves; an edit
    always moves the mtime, which is what matters for "same inputs".
    """
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            full = Path(root) / name
            try:
                info = full.lstat()
            except OSError:
                continue
            digest.update(f"{full.relative_to(path)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return "fp-" + digest.hexdigest()


def private_tree(identity: SourceIdentity, dest: Path, progress: Progress) -> Path:
    """Materialise the source at ``dest`` (which must not exist); returns ``dest``."""
    if identity.kind == "tarball":
        pristine = pristine_extraction(Path(identity.location), identity.digest, progress)
        progress("kernel: linking a private copy of the pristine source")
        run(["cp", "-al", pristine, dest], what="cp -al (private source copy)")
    elif identity.kind == "directory":
        progress(f"kernel: copying {identity.location} to a private tree")
        dest.mkdir()
        run(["rsync", "-a", "--exclude=/.git", f"{identity.location}/", f"{dest}/"], what="rsync (private source copy)")
        if (dest / ".config").exists() or (dest / "include/config").exists():
            # an in-tree configured source refuses out-of-tree builds; clean only our copy
            progress("kernel: the source was configured in tree; make mrproper in the private copy")
            run(["make", "-s", "mrproper"], cwd=dest, what="make mrproper")
    else:
        progress(f"kernel: checking out {identity.ref} ({identity.digest[:12]})")
        if _is_url(identity.location):
            run(["git", "init", "-q", dest], what="git init")
            run(["git", "-C", dest, "fetch", "-q", "--depth", "1", identity.location, identity.digest],
                what=f"git fetch {identity.location}")
        else:
            run(["git", "clone", "-q", "--shared", "--no-checkout", identity.location, dest], what="git clone --shared")
        run(["git", "-C", dest, "checkout", "-q", "--detach", identity.digest], what="git checkout")
    return dest


def pristine_extraction(tarball: Path, sha256: str, progress: Progress) -> Path:
    """The cached extraction of a tarball (the tree root), made once per sha256."""
    cached = store.sources_dir() / sha256
    if (cached / "Makefile").is_file():
        return cached
    tmp = store.sources_dir() / f".tmp-{sha256}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        progress(f"kernel: extracting {tarball.name} once into the source cache (~30 s)")
        run(["tar", "-xf", tarball, "-C", tmp], what=f"tar -xf {tarball.name}")
        entries = list(tmp.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if not (root / "Makefile").is_file():
            raise ToolError(f"{tarball} does not contain a kernel source tree")
        if root is tmp:
            os.replace(tmp, cached)
        else:
            os.replace(root, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return cached
