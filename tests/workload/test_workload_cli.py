"""The workload CLI: bad input is one argparse line and exit 2; predict's arithmetic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mshare_lab.cli", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args,argument", [
    (["--sga", "12Q"], "--sga"),
    (["--clients", "0"], "--clients"),
    (["--mechanism", "nosuch"], "--mechanism"),
    (["--populate", "1.5"], "--populate"),
])
def test_bad_input_is_one_line_exit_2(args, argument):
    proc = _cli("local", *args)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mshare-lab local: error: argument " + argument), last
    assert proc.stdout == ""


def test_predict_oracle_case(tmp_path):
    out = tmp_path / "predict.json"
    proc = _cli("predict", "--sga", "300G", "--clients", "1500", "--ram", "512G", "--lab-ram", "4G",
                "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "878.9 GiB" in proc.stdout
    assert "does NOT fit in 512.0 GiB" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["theory_pte_bytes"] == 300 * 2**30 // 4096 * 8 * 1500
    assert doc["fits"] is False
    # same pressure in the lab guest: page tables / RAM as on the big machine
    assert doc["scaled"]["clients"] == 1500
    assert abs(doc["scaled"]["pressure"] - doc["pressure"]) / doc["pressure"] < 0.01


def test_predict_sharing_mechanism_fits():
    proc = _cli("predict", "--sga", "300G", "--clients", "1500", "--ram", "512G", "--mechanism", "msharefs")
    assert proc.returncode == 0, proc.stderr
    # the shared ratio, not the unshared one
    assert "page tables with msharefs (one shared copy): 600.0 MiB (shared page tables / RAM = 0.0011)" in proc.stdout
    assert "fits in 512.0 GiB" in proc.stdout and "NOT" not in proc.stdout
