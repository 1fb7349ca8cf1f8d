#!/usr/bin/env python3
"""Rebuild time of a one-line change in one patch of a series, against a build from scratch.

The series is the test marker series plus one patch of the benchmark's own (a function
appended to kernel/sys.c). Three builds of Debian's 6.12 source with the base config:

1. the series with the patch returning N (warms ccache; a from-scratch build if cold),
2. the same patch changed on one line (returns N+1): the incremental rebuild measured,
3. step 2's inputs again: the artifact cache hit.

``--from-scratch`` adds a build with ccache off (``--no-ccache``, ~9 min here) for the
reference figure; without it the figure printed is the latest cold build in the store.
Run under the CPU lock on a shared machine:

    flock /tmp/cpu.lock .venv/bin/python benchmarks/kernel_rebuild.py [--from-scratch]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from mshare_lab.kernel import source, store
from mshare_lab.kernel.build import BuildRequest, build_kernel
from mshare_lab.kernel.progress import quiet
from mshare_lab.paths import REPO_ROOT

TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
SERIES = REPO_ROOT / "tests/kernel/fixtures/marker-series.mbox"
TARGET = "kernel/sys.c"


def one_line_patch(pristine: Path, directory: Path, value: int) -> Path:
    before = (pristine / TARGET).read_text()
    after = before + f"\nint mshare_lab_bench(void);\nint mshare_lab_bench(void)\n{{\n\treturn {value};\n}}\n"
    for side, text in (("a", before), ("b", after)):
        (directory / side / "kernel").mkdir(parents=True, exist_ok=True)
        (directory / side / TARGET).write_text(text)
    diff = subprocess.run(["diff", "-u", "--label", f"a/{TARGET}", "--label", f"b/{TARGET}",
                           str(directory / "a" / TARGET), str(directory / "b" / TARGET)],
                          capture_output=True, text=True)
    patch = directory / f"bench-{value}.patch"
    patch.write_text(diff.stdout)
    return patch


def timed_build(name: str, patch: Path, **options) -> tuple[float, dict]:
    started = time.monotonic()
    artifact = build_kernel(BuildRequest(source=str(TARBALL), name=name, patches=(SERIES, patch), **options), quiet)
    return time.monotonic() - started, artifact.metadata


def latest_cold_build() -> float | None:
    """build_seconds of the newest built artifact that compiled (nearly) everything."""
    cold = [a.metadata for a in store.list_all() if a.kind == "built"
            and (a.metadata.get("ccache") is None or a.metadata["ccache"]["misses"] > a.metadata["ccache"]["hits"])]
    cold.sort(key=lambda m: m.get("created", ""))
    return cold[-1]["build_seconds"] if cold else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-scratch", action="store_true", help="also build once with ccache off")
    args = parser.parse_args()
    pristine = source.pristine_extraction(TARBALL, source.file_sha256(TARBALL), print)
    nonce = time.time_ns() % 1_000_000_000          # new inputs every run: never an artifact hit
    with tempfile.TemporaryDirectory(prefix="mshare-lab-bench-") as tmp:
        first = one_line_patch(pristine, Path(tmp) / "1", nonce)
        second = one_line_patch(pristine, Path(tmp) / "2", nonce + 1)
        warm, _ = timed_build("bench-rebuild-a", first)
        print(f"warm-up build (series + patch v1):        {warm:7.1f} s")
        rebuild, meta = timed_build("bench-rebuild-b", second)
        cache = meta["ccache"] or {}
        print(f"one-line change, incremental rebuild:     {rebuild:7.1f} s  "
              f"(ccache {cache.get('hits')} hits, {cache.get('misses')} misses, "
              f"{meta['make']['compiled']} objects)")
        hit, _ = timed_build("bench-rebuild-b", second)
        print(f"same inputs again (artifact cache hit):   {hit:7.1f} s")
        if args.from_scratch:
            scratch, _ = timed_build("bench-rebuild-scratch", second, ccache=False, force=True)
            print(f"from scratch (ccache off):                {scratch:7.1f} s")
        else:
            recorded = latest_cold_build()
            print(f"from scratch (latest cold build, stored): {recorded:7.1f} s" if recorded
                  else "from scratch: no cold build stored; pass --from-scratch")


if __name__ == "__main__":
    main()
