"""Incremental rebuilds through ccache: fast, and exact (a dropped patch is really gone).

The suite's one full build (``marker_kernel``) fills the compiler cache; the builds here
change one small patch of the project's own on top of the marker series, so only what
it touches (plus the link) costs real compiling. The proof of exactness reads the new
artifact's System.map, which the build writes from the vmlinux it just linked: a stale
object of the dropped patch would put its symbol there.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kernel_helpers import FIXTURES
from mshare_lab.errors import KernelBuildError
from mshare_lab.kernel import store
from mshare_lab.kernel.artifact import KernelArtifact
from mshare_lab.kernel.build import BuildRequest, build_kernel
from mshare_lab.paths import kernels_dir

pytestmark = [pytest.mark.kernel_build, pytest.mark.slow]

# kernel/sys.c is built by every config and untouched by the marker series
TARGET = "kernel/sys.c"
MARKER_SYMBOL = "mshare_lab_marker"


def one_symbol_patch(pristine: Path, directory: Path, symbol: str, value: int) -> Path:
    """A patch of the project's own: a global function ``symbol`` appended to kernel/sys.c."""
    before = (pristine / TARGET).read_text()
    after = before + f"\nint {symbol}(void);\nint {symbol}(void)\n{{\n\treturn {value};\n}}\n"
    old, new = directory / "old", directory / "new"
    for root, text in ((old, before), (new, after)):
        (root / "kernel").mkdir(parents=True, exist_ok=True)
        (root / TARGET).write_text(text)
    diff = subprocess.run(["diff", "-u", "--label", f"a/{TARGET}", "--label", f"b/{TARGET}",
                           str(old / TARGET), str(new / TARGET)], capture_output=True, text=True)
    assert diff.returncode == 1, diff.stderr
    patch = directory / f"{symbol}.patch"
    patch.write_text(diff.stdout)
    return patch


def symbols(artifact) -> set[str]:
    return {line.split()[-1] for line in artifact.system_map.read_text().splitlines() if line.strip()}


def _build(name: str, *patches: Path) -> tuple[KernelArtifact, list[str]]:
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    # force: a rerun must rebuild too (same inputs would be an artifact cache hit, no compiling)
    request = BuildRequest(source="/usr/src/linux-source-6.12.tar.xz", name=name,
                           patches=(FIXTURES / "marker-series.mbox", *patches), force=True)
    return build_kernel(request, progress), lines


def test_dropped_patch_is_gone_from_an_incremental_rebuild(marker_kernel, pristine_612, tmp_path):
    with_x = one_symbol_patch(pristine_612, tmp_path / "x", "mshare_lab_extra_x", 1)
    with_y = one_symbol_patch(pristine_612, tmp_path / "y", "mshare_lab_extra_y", 2)
    first, _ = _build("test-incremental-x", with_x)
    # the one-line change: patch X dropped, patch Y (same place, other symbol) in its stead
    second, lines = _build("test-incremental-y", with_y)

    assert "mshare_lab_extra_x" in symbols(first)
    assert "mshare_lab_extra_y" not in symbols(first)
    assert "mshare_lab_extra_y" in symbols(second)
    assert "mshare_lab_extra_x" not in symbols(second)           # no stale object of X
    assert MARKER_SYMBOL in symbols(second)                       # the series itself is still in
    assert first.content_hash != second.content_hash != marker_kernel.artifact.content_hash

    for artifact in (first, second):
        meta = artifact.metadata
        cache = meta["ccache"]
        # warm from the marker build: nearly every compile is served, the changed file is not
        assert cache["hits"] > 20 * max(cache["misses"], 1), cache
        assert cache["misses"] >= 1, cache                         # kernel/sys.c really compiled
        assert meta["make"]["compiled"] > 500
        print(f"\n{artifact.name}: {meta['build_seconds']} s, ccache {cache}")
    # progress had a total from the earlier build of the same config
    assert any(line.startswith("  make: done,") and " of ~" in line for line in lines), lines


def test_compile_error_names_the_first_error_and_the_patch(marker_kernel, pristine_612, tmp_path):
    """A patch that breaks an early file: the error is its file:line, not make's last lines."""
    rel = "init/calibrate.c"
    before = (pristine_612 / rel).read_text()
    lines_before = before.count("\n")
    after = before + "int mshare_lab_broken = mshare_lab_no_such_symbol;\n"
    (tmp_path / "a/init").mkdir(parents=True)
    (tmp_path / "b/init").mkdir(parents=True)
    (tmp_path / "a" / rel).write_text(before)
    (tmp_path / "b" / rel).write_text(after)
    diff = subprocess.run(["diff", "-u", "--label", f"a/{rel}", "--label", f"b/{rel}",
                           str(tmp_path / "a" / rel), str(tmp_path / "b" / rel)], capture_output=True, text=True)
    patch = tmp_path / "breaks-calibrate.patch"
    patch.write_text(diff.stdout)
    work = kernels_dir() / "work"
    work_before = set(work.iterdir()) if work.exists() else set()

    with pytest.raises(KernelBuildError) as info:
        _build("test-compile-error", patch)
    message, hint = str(info.value), info.value.hint or ""
    assert f"{rel}:{lines_before + 1}:" in message, message
    assert "error:" in message and "mshare_lab_no_such_symbol" in message
    assert "make[" not in message and "Error 1" not in message     # not make's tail
    assert "breaks-calibrate.patch" in hint and "full log:" in hint
    assert info.value.exit_code == 2
    with pytest.raises(Exception):
        store.get("test-compile-error")
    assert (set(work.iterdir()) if work.exists() else set()) <= work_before
