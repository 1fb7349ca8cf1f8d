"""Fixtures of the kernel area: the Linux 6.12 source tarball and ONE real kernel build.

The whole suite builds a single kernel (session scope): Debian's linux-source-6.12 plus
the marker patch series in fixtures/, with the lab's base fragment. Every test that
needs a built kernel shares it; the build is a cache hit when the artifact exists.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mshare_lab.kernel import source
from mshare_lab.kernel.build import BuildRequest, build_kernel

from kernel_helpers import FIXTURES, TARBALL



@pytest.fixture(scope="session")
def tarball() -> Path:
    if not TARBALL.is_file():
        pytest.fail(f"{TARBALL} is missing: run scripts/setup (package linux-source-6.12)")
    return TARBALL


@pytest.fixture(scope="session")
def tarball_sha256(tarball) -> str:
    return source.file_sha256(tarball)


@pytest.fixture(scope="session")
def pristine_612(tarball, tarball_sha256) -> Path:
    return source.pristine_extraction(tarball, tarball_sha256, print)


class BuiltKernel:
    def __init__(self, artifact, lines: list[str], seconds: float):
        self.artifact = artifact
        self.lines = lines
        self.seconds = seconds


@pytest.fixture(scope="session")
def marker_kernel(tarball) -> BuiltKernel:
    """The one real build of the suite (a cache hit if an earlier session built it)."""
    lines: list[str] = []

    def progress(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    request = BuildRequest(source=str(tarball), name="test-marker-6.12",
                           patches=(FIXTURES / "marker-series.mbox",))
    started = time.monotonic()
    artifact = build_kernel(request, progress)
    return BuiltKernel(artifact, lines, time.monotonic() - started)


