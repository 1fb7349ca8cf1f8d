"""One small real matrix run for every report test (a session fixture).

``mshare-lab run tests/report/matrix.yaml --parallel 2 --junit-xml`` in micro guests on the
stock Debian kernel: shmem and hugetlb at 1 GiB (two repeats each), an OOM in a memory
cgroup and an unsupported mechanism with an unmet expectation. About 4 minutes of guest
time under TCG, once per session. The tests only read what it left (the store, the JUnit
file, the CLI's exit status and output).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mshare_lab.guest import testing

from report_helpers import MATRIX

#: development aid: a directory where a previous session's run was kept (results.sqlite,
#: junit.xml, run.out, run.rc) is read instead of running the matrix again; CI never sets it
REUSE_ENV = "MSHARE_LAB_REPORT_REUSE"


@dataclass(frozen=True)
class LabRun:
    results: Path
    junit: Path
    returncode: int
    stdout: str
    stderr: str
    directory: Path


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory) -> LabRun:
    reuse = os.environ.get(REUSE_ENV)
    if reuse and (Path(reuse) / "run.rc").exists():
        directory = Path(reuse)
        return LabRun(directory / "results.sqlite", directory / "junit.xml",
                      int((directory / "run.rc").read_text()), (directory / "run.out").read_text(), "",
                      directory)
    testing.debian_kernel()
    directory = tmp_path_factory.mktemp("report-run")
    cli = Path(sys.executable).parent / "mshare-lab"
    proc = subprocess.run([str(cli), "run", str(MATRIX), "--parallel", "2",
                           "--results", str(directory / "results.sqlite"),
                           "--junit-xml", str(directory / "junit.xml")],
                          capture_output=True, text=True, timeout=1800)
    (directory / "run.out").write_text(proc.stdout)
    (directory / "run.rc").write_text(str(proc.returncode))
    if reuse:
        shutil.copytree(directory, reuse, dirs_exist_ok=True)
    assert (directory / "results.sqlite").exists(), proc.stderr[-3000:]
    return LabRun(directory / "results.sqlite", directory / "junit.xml", proc.returncode, proc.stdout,
                  proc.stderr, directory)
