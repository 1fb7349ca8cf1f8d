"""Two real ``mshare-lab run``s at once (micro guests, the real CLI) into one PostgreSQL store,
then the row counts and a ``compare`` over both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mshare_lab import cli
from mshare_lab.results.location import results_location
from mshare_lab.results.store import ResultStore

pytestmark = pytest.mark.vm

MATRIX = """\
defaults:
  kernels: debian-6.1
  duration: 1
  ram: 1G
  timeout: 400
matrix:
  - name: shared-{mechanism}
    mechanisms: {mechanism}
    sga: 32M
    clients: 10
    expect: {{outcome: completed, clients_attached_min: 10}}
"""


def _run_parses_urls() -> bool:
    """Whether ``mshare-lab run --results`` reads a URL as results_location does (commands/lab.py)."""
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions:       # argparse keeps subcommands here
        run = action.choices.get("run")
        if run is not None:
            for a in run._actions:
                if a.dest == "results" and a.type is not None:
                    parsed = a.type("postgresql://u@127.0.0.1:1/db")
                    return parsed == results_location("postgresql://u@127.0.0.1:1/db")
    return False


def _domains() -> set[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return {line for line in out.split() if line}


@pytest.mark.skipif(not _run_parses_urls(), reason="mshare-lab run does not parse --results with "
                    "results_location yet (commands/lab.py)")
def test_two_concurrent_runs_write_one_postgres_store(tmp_path, pg_url):
    before = _domains()
    cli_path = Path(sys.executable).parent / "mshare-lab"
    children = []
    for mechanism in ("shmem", "sysv"):
        matrix = tmp_path / f"{mechanism}.yaml"
        matrix.write_text(MATRIX.format(mechanism=mechanism))
        children.append(subprocess.Popen([str(cli_path), "run", str(matrix), "--results", pg_url],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [child.communicate(timeout=900) for child in children]
    assert [c.returncode for c in children] == [0, 0], outputs
    with ResultStore(pg_url) as store:
        runs = store.runs()
        assert store.count() == len(runs) == 2
        assert sorted(r.scenario.workload.mechanism for r in runs) == ["shmem", "sysv"]
        assert len({r.run_id for r in runs}) == 2
        for r in runs:
            assert r.outcome == "completed" and r.result["clients_attached"] == 10
            assert store.metrics(r.run_id)["clients_attached"] == 10.0
            assert r.host is not None and r.host.get("accelerator") in ("kvm", "tcg")
        assert list(store.kernels()) == ["debian-6.1"]
    compared = subprocess.run([str(cli_path), "compare", "--by", "mechanism", "--metric", "pte_ratio", "--baseline", "shmem",
                               "--results", pg_url], capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert any("shmem" in line and "baseline" in line for line in lines), compared.stdout
    assert any(line.split()[:1] == ["sysv"] or " sysv " in line for line in lines), compared.stdout
    assert "warning" not in compared.stdout        # one host, one accelerator
    assert _domains() <= before, "the runs left guests behind"
