"""Build a kernel from source + patches + config fragments into a content-addressed artifact.

The recipe (tuxmake style, data not code paths):

1. identify the source (tarball sha256, git commit, directory fingerprint), hash every
   patch and fragment; the content hash of all inputs names the artifact, so the same
   inputs are a cache hit and are never built twice (``force`` rebuilds);
2. materialise a private tree (the user's source is never written), apply the patches
   (a patch that does not apply stops here: PatchError, before any compiling);
3. ``make allnoconfig`` with KCONFIG_ALLCONFIG = base fragment + user fragments (later
   wins), then check that every option asked for is in the final .config
   (ConfigDroppedError names the dropped ones, still before compiling);
4. ``make bzImage`` out of tree (the object dir is a child of the private tree, so every
   path is relative and ccache serves what an earlier build compiled: ccache.py), with
   live progress (objects of about how many, elapsed, estimate) and the full log kept;
   a compiler error is reported as its first ``file:line: error:``;
5. assemble bzImage, .config, System.map, build.log and metadata.json (mechanisms
   detected from the patched tree and the config) and register the name.

The private tree and build directory are removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..processes import pid_alive
from ..errors import ConfigDroppedError, ConfigError, KernelBuildError, NotFoundError, ToolError
from ..paths import REPO_ROOT, kernels_dir
from . import ccache, detect, kconfig, source, store
from . import series as series_mod
from .artifact import BUILD_LOG, BZIMAGE, CONFIG, MODULES, SYSTEM_MAP, KernelArtifact, write_metadata
from .patches import PatchInput, apply_all, expand, touched_files
from .progress import CompilerError, MakeTail, Progress, stderr_progress
from .tools import run, stream

#: bump when the steps below change what a given set of inputs produces
#: (2: fixed KBUILD_BUILD_TIMESTAMP/USER/HOST, so `uname -v` no longer shows the build time)
RECIPE_VERSION = 2
#: the object dir's name inside the private tree: a direct child, so kbuild uses srctree=..
OBJDIR = "mshare-lab-obj"
FRAGMENTS_DIR = REPO_ROOT / "images" / "kernel"
BASE_FRAGMENT = FRAGMENTS_DIR / "base.config"


@dataclass(frozen=True)
class BuildRequest:
    source: str                                   # directory, tarball, or git path/URL
    name: str
    ref: str | None = None
    patches: tuple[Path, ...] = ()
    fragments: tuple[str | Path, ...] = ()        # paths, or names of images/kernel/<name>.config
    force: bool = False
    ccache: bool = True                           # serve unchanged objects from the compiler cache
    series: str | None = None                     # Message-ID or lore URL, assembled by b4
    series_mbox: Path | None = None               # the same, from a thread saved on disk
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class ResolvedInputs:
    """Everything that decides the artifact's content, hashed into its name."""

    source: source.SourceIdentity
    patches: tuple[PatchInput, ...]
    fragments: tuple[Path, ...]                   # base first, then the user's, in order
    series: series_mod.FetchedSeries | None = None  # where the first patch input came from (b4)

    def fragment_hashes(self) -> list[dict]:
        return [{"path": str(p), "sha256": source.file_sha256(p)} for p in self.fragments]

    def content_hash(self) -> str:
        key = {
            "recipe": RECIPE_VERSION,
            "source": {"kind": self.source.kind, "digest": self.source.digest},
            "patches": [sha for p in self.patches for _, sha in p.files],
            "fragments": [f["sha256"] for f in self.fragment_hashes()],
        }
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def resolve_fragment(spec: str | Path) -> Path:
    """A fragment path as given, or a name from images/kernel/ (``mshare`` -> mshare.config)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    for candidate in (FRAGMENTS_DIR / str(spec), FRAGMENTS_DIR / f"{spec}.config"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in FRAGMENTS_DIR.glob("*.config") if p != BASE_FRAGMENT))
    raise NotFoundError(f"config fragment {spec} not found", hint=f"pass a file or one of: {known}")


def resolve_inputs(request: BuildRequest) -> ResolvedInputs:
    """Everything cheap that can be wrong is checked here, before any copying or make."""
    store.check_name(request.name)
    if request.jobs < 1:
        raise ConfigError(f"--jobs {request.jobs} must be at least 1")
    fragments = (BASE_FRAGMENT, *(resolve_fragment(f) for f in request.fragments))
    for fragment in fragments:
        kconfig.parse_fragment(fragment)          # malformed lines fail now, with file:line
    fetched = None
    if request.series is not None or request.series_mbox is not None:
        # the series goes first; --patch files are applied on top of it (fixups, debug)
        fetched = series_mod.fetch(request.series, mbox=request.series_mbox)
    patches = tuple(expand(Path(p)) for p in ((fetched.mbox,) if fetched else ()) + tuple(request.patches))
    return ResolvedInputs(source.identify(request.source, request.ref), patches, fragments, fetched)


def build_kernel(request: BuildRequest, progress: Progress = stderr_progress) -> KernelArtifact:
    inputs = resolve_inputs(request)
    digest = inputs.content_hash()
    with _lock(digest):
        if not request.force and store.find_hash(digest) is not None:
            progress(f"kernel: cache hit for {request.name} ({digest[:12]}): same inputs already built")
            return store.alias(request.name, digest)
        log = _log_path(request.name)
        started = time.monotonic()
        with _workdir(digest) as work:
            tree = source.private_tree(inputs.source, work / "src", progress)
            apply_all(list(inputs.patches), tree, progress)
            objdir = tree / OBJDIR
            objdir.mkdir()
            setup = ccache.make_setup(work, use_cache=request.ccache)
            if setup.stats_log is None:
                progress("kernel: ccache not in use (not installed: run scripts/setup); compiling everything")
            final = configure(tree, objdir, inputs.fragments, log, progress, setup)
            with_modules = final.get("CONFIG_MODULES") == "y"
            fragment_shas = [f["sha256"] for f in inputs.fragment_hashes()]
            tail = compile_kernel(tree, objdir, request.jobs, log, progress, with_modules, setup,
                                  expected=expected_objects(fragment_shas), patches=inputs.patches)
            release = run(["make", "-s", f"O={objdir}", *setup.variables, "kernelrelease"], cwd=tree,
                          env=setup.env, what="make kernelrelease").strip().splitlines()[-1]
            stats = setup.stats()
            seconds = round(time.monotonic() - started, 1)
            with store.staging(digest) as stage:
                shutil.copy2(objdir / "arch/x86/boot/bzImage", stage / BZIMAGE)
                shutil.copy2(objdir / ".config", stage / CONFIG)
                shutil.copy2(objdir / "System.map", stage / SYSTEM_MAP)
                if with_modules:
                    progress("kernel: installing modules")
                    stream(["make", f"O={objdir}", *setup.variables, f"INSTALL_MOD_PATH={stage / MODULES}",
                            "modules_install"], cwd=tree, log=log, env=setup.env, on_line=lambda _l: None,
                           what="make modules_install")
                write_metadata(stage, {
                    "name": request.name,
                    "kind": "built",
                    "release": release,
                    "source": inputs.source.as_dict(),
                    "patches": [p.describe() for p in inputs.patches],
                    "series": ({"origin": inputs.series.origin, "revision": inputs.series.revision,
                                "patches": inputs.series.patches} if inputs.series else None),
                    "fragments": inputs.fragment_hashes(),
                    "mechanisms": detect.detect(tree, final),
                    "compiler": final.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
                    "build_seconds": seconds,
                    # how it was made, not what: never part of the content hash
                    "make": {"compiled": tail.compiled, "steps": tail.steps},
                    "ccache": stats.as_dict() if stats else None,
                    "jobs": request.jobs,
                    "recipe_version": RECIPE_VERSION,
                    "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "content_hash": digest,
                })
                shutil.copy2(log, stage / BUILD_LOG)
        artifact = store.alias(request.name, digest)
    cached = f"; ccache {stats.hits} hits, {stats.misses} misses" if stats else ""
    progress(f"kernel: built {artifact.name} {release} in {seconds:.0f} s ({digest[:12]}{cached})")
    return artifact


def configure(tree: Path, objdir: Path, fragments: tuple[Path, ...], log: Path,
              progress: Progress, setup: ccache.MakeSetup | None = None) -> dict[str, str]:
    """allnoconfig + fragments; ConfigDroppedError when an asked-for option did not survive."""
    progress("kernel: configuring (allnoconfig + " + ", ".join(f.name for f in fragments) + ")")
    merged = objdir / "mshare-lab-fragments.config"
    merged.write_text("".join(f.read_text().rstrip("\n") + "\n" for f in fragments))
    variables, env = (setup.variables, setup.env) if setup else ((), None)
    stream(["make", f"O={objdir}", *variables, f"KCONFIG_ALLCONFIG={merged}", "allnoconfig"], cwd=tree, log=log,
           env=env, on_line=lambda _l: None, what="make allnoconfig")
    final = kconfig.read_config(objdir / ".config")
    lost = kconfig.dropped(kconfig.effective_requests(list(fragments)), final)
    if lost:
        details = "; ".join(f"{r.line()} (asked at {r.location}) ended as {_shown(got)}" for r, got in lost)
        raise ConfigDroppedError(f"{len(lost)} config option(s) dropped by Kconfig: {details}",
                                 hint="an unmet dependency or an option this source does not have; "
                                      "add the dependency to the fragment or use the kernel that has it")
    return final


def _shown(value: str) -> str:
    return "not set" if value == "n" else value


def compile_kernel(tree: Path, objdir: Path, jobs: int, log: Path, progress: Progress, with_modules: bool,
                   setup: ccache.MakeSetup, *, expected: int | None = None,
                   patches: tuple[PatchInput, ...] = ()) -> MakeTail:
    targets = ["bzImage", "modules"] if with_modules else ["bzImage"]
    progress(f"kernel: make -j{jobs} {' '.join(targets)} (log: {log})")
    tail = MakeTail(progress, expected=expected)
    try:
        stream(["make", f"O={objdir}", *setup.variables, f"-j{jobs}", *targets], cwd=tree, log=log,
               env=setup.env, on_line=tail.feed, what="make " + " ".join(targets))
    except ToolError as exc:
        if tail.first_error is None:
            raise                       # no compiler diagnostic: make/linker/host trouble
        raise KernelBuildError(f"the kernel does not compile: {tail.first_error}",
                               hint=_blame(tail.first_error, patches) + f"full log: {log}") from exc
    progress(f"  make: done, {tail.status()}, {tail.steps} steps")
    return tail


def _blame(error: CompilerError, patches: tuple[PatchInput, ...]) -> str:
    """'patched by series.mbox [2/4] ...; ' when a patch of the series touched the file."""
    units = [u.label for p in patches for u in p.units if error.file in touched_files(u)]
    return f"{error.file} is patched by {', '.join(units)}; " if units else ""


def expected_objects(fragment_shas: list[str]) -> int | None:
    """Objects the latest earlier build of the same config compiled: the progress total."""
    best: tuple[str, int] | None = None
    for artifact in store.list_all():
        meta = artifact.metadata
        compiled = (meta.get("make") or {}).get("compiled")
        if not compiled or [f.get("sha256") for f in meta.get("fragments", [])] != fragment_shas:
            continue
        if best is None or meta.get("created", "") > best[0]:
            best = (meta.get("created", ""), int(compiled))
    return best[1] if best else None


def _log_path(name: str) -> Path:
    """Kept outside the work dir so a failed build's log survives for the ToolError to name."""
    logs = kernels_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    log.write_text("")
    return log


@contextmanager
def _workdir(digest: str) -> Iterator[Path]:
    """Private source + object dir on the cache's filesystem (hard links need that)."""
    root = kernels_dir() / "work"
    root.mkdir(parents=True, exist_ok=True)
    _sweep_dead(root)
    work = root / f"{digest[:12]}-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep_dead(root: Path) -> None:
    """Work dirs of builds whose process died without cleaning (kill -9, power loss)."""
    for entry in root.iterdir():
        pid = entry.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _lock(digest: str) -> Iterator[None]:
    """One build per content hash at a time; the second waits and then finds the cache hit."""
    locks = kernels_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{digest}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
