"""Incremental kernel builds through ccache, without letting the cache decide an artifact.

Every build still compiles a fresh private tree (build.py); ccache only short-cuts each
compiler call whose *preprocessed input and flags* were seen before. A patch that is
removed from a series changes the preprocessed text of every file it touched, so those
files miss the cache and are compiled again: a stale object cannot reach an artifact by
construction (a kept object directory would need make's mtime logic to notice a removed
patch, which it does not). The cache is therefore not part of the content hash; the
hits and misses of a build are recorded in its metadata.json as a fact about how it was
made.

What makes a second private tree hit the first one's entries:

* the object directory is a direct child of the private source tree (build.py), so
  kbuild uses ``srctree := ..`` and every path it hands the compiler is relative;
  CCACHE_BASEDIR (the work dir) rewrites what stays absolute, CCACHE_NOHASHDIR keeps the
  per-build working directory out of the hash;
* CCACHE_COMPILERCHECK=content: a gcc upgrade invalidates, a touched mtime does not;
* KBUILD_BUILD_TIMESTAMP/USER/HOST are fixed, so init/version.c and friends are the
  same text in every build (and the artifact is reproducible).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..paths import lab_home

#: cap on the shared cache; one 6.12 base-config build stores ~55 MB (compressed)
MAX_SIZE = "5G"
#: fixed build identity: `uname -v` shows this instead of the wall clock of the build
BUILD_TIMESTAMP = "Thu Jan  1 00:00:00 UTC 1970"
BUILD_USER = "mshare-lab"
BUILD_HOST = "mshare-lab"
STATS_LOG = "ccache-stats.log"

_HIT_COUNTERS = {"direct_cache_hit", "preprocessed_cache_hit"}
_MISS_COUNTERS = {"cache_miss"}


def cache_dir() -> Path:
    return lab_home() / "ccache"


def available() -> bool:
    return shutil.which("ccache") is not None


@dataclass(frozen=True)
class MakeSetup:
    """The extra make variables and environment one build's make calls share."""

    variables: tuple[str, ...]          # on the make command line (kbuild assigns CC itself)
    env: dict[str, str]
    stats_log: Path | None              # None: ccache is not installed, compiled plainly

    def stats(self) -> "CacheStats | None":
        return CacheStats.from_log(self.stats_log) if self.stats_log else None


def make_setup(work: Path, *, use_cache: bool = True) -> MakeSetup:
    """Variables/environment for make in the per-build directory ``work``."""
    env = dict(os.environ)
    env.update(KBUILD_BUILD_TIMESTAMP=BUILD_TIMESTAMP, KBUILD_BUILD_USER=BUILD_USER,
               KBUILD_BUILD_HOST=BUILD_HOST)
    if not (use_cache and available()):
        return MakeSetup((), env, None)
    cache_dir().mkdir(parents=True, exist_ok=True)
    stats_log = work / STATS_LOG
    env.update(CCACHE_DIR=str(cache_dir()), CCACHE_MAXSIZE=MAX_SIZE, CCACHE_BASEDIR=str(work),
               CCACHE_NOHASHDIR="true", CCACHE_COMPILERCHECK="content", CCACHE_STATSLOG=str(stats_log))
    env.pop("CCACHE_DISABLE", None)
    return MakeSetup(("CC=ccache gcc", "HOSTCC=ccache gcc"), env, stats_log)


@dataclass(frozen=True)
class CacheStats:
    """Compiler calls of one build: served from the cache, compiled, or not cacheable
    (links, Kconfig probes, assembler-only calls)."""

    hits: int
    misses: int
    uncacheable: int

    @classmethod
    def from_log(cls, log: Path) -> "CacheStats":
        """ccache's stats log: a ``# file`` line per call, then the counters it bumped."""
        hits = misses = other = 0
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            return cls(0, 0, 0)
        for entry in text.split("\n# "):
            counters = set(entry.splitlines()[1:])
            if counters & _HIT_COUNTERS:
                hits += 1
            elif counters & _MISS_COUNTERS:
                misses += 1
            elif entry.strip():
                other += 1
        return cls(hits, misses, other)

    def as_dict(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "uncacheable": self.uncacheable,
                "dir": str(cache_dir())}
