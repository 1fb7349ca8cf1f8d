"""What a matrix run does before and after its guests, without booting one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from mshare_lab import paths
from mshare_lab.guest.gc import gc
from mshare_lab.guest.libvirt_driver import SCRATCH_OWNER_FILE, scratch_root


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mshare_lab.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_an_unknown_kernel_names_its_matrix_line_and_leaves_no_results_file(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("defaults: {duration: 1, ram: 1G}\nmatrix:\n"
                      "  - {kernels: no-such-kernel, mechanisms: shmem, sga: 32M, clients: 10}\n")
    results = tmp_path / "results.sqlite"
    out = _cli("run", str(matrix), "--results", str(results))
    assert out.returncode == 2, out.stderr
    assert f"{matrix}:3: no kernel named 'no-such-kernel'" in out.stderr
    assert not results.exists(), "a run refused before its first boot leaves no results file"


def test_an_infeasible_scenario_is_refused_before_any_guest_with_what_fits(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("defaults: {kernels: debian-6.1, duration: 1, ram: 512M}\nmatrix:\n"
                      "  - {mechanisms: shmem, sga: 128M, clients: 3000, expect: {outcome: completed}}\n")
    out = _cli("run", str(matrix), "--results", str(tmp_path / "r.sqlite"))
    assert out.returncode == 2, out.stderr
    assert f"{matrix}:3: debian-6.1/shmem/128M/x3000/ram512M#1: 3000 clients x 128.0 MiB shmem needs" in out.stderr
    assert "at most" in out.stderr and "boot" not in out.stderr


def test_gc_removes_the_unstored_run_directories_of_a_killed_matrix_run():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id = "gc-test-unstored-run"
    scratch = scratch_root() / run_id
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / SCRATCH_OWNER_FILE).write_text(json.dumps({"pid": dead.pid, "start": "1"}))
    runs = paths.runs_dir() / run_id
    interrupted, stored, kept = runs / "001-interrupted", runs / "002-stored", runs / "003-kept-as-json"
    for workdir in (interrupted, stored, kept):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "console.log").write_text("boot\n")
        (workdir / "serial.log").write_text("")
    (stored / ".stored").touch()
    (kept / "record.json").write_text("{}")
    try:
        report = gc()
        assert scratch in report.scratch_dirs
        assert interrupted in report.files and not interrupted.exists()
        assert stored.is_dir() and kept.is_dir(), "stored runs keep their artifacts"
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
