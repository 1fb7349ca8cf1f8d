"""Reports of stores with nothing to show: empty, from an interrupted run; and the text
formats' limits (72 columns with many groups, JUnit for every outcome) on plain records."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mshare_lab.cli import main
from mshare_lab.guest import testing
from mshare_lab.lab.record import RunRecord
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec
from mshare_lab.report import junit
from mshare_lab.report.email import format_email
from mshare_lab.results.compare import compare
from mshare_lab.results.store import ResultStore

from report_helpers import parse

CLI = Path(sys.executable).parent / "mshare-lab"


def _record(kernel: str, outcome: str = "completed", repeat: int = 1, expect=None, failures=(), **result) -> RunRecord:
    scenario = Scenario(kernel, WorkloadSpec(mechanism="shmem", sga=256 << 20, clients=100),
                        GuestShape(memory=4 << 30), repeat=repeat, expect=expect or {})
    return RunRecord(scenario, outcome, reason=None if outcome == "completed" else f"{outcome} here",
                     result=dict(result) or None, started_at=1_800_000_000.0 + repeat,
                     finished_at=1_800_000_030.5 + repeat, guest_seconds=25.0, expectation_failures=list(failures))


def test_an_empty_store_makes_a_report_that_says_so(tmp_path):
    db = tmp_path / "empty.sqlite"
    ResultStore(db).close()
    out = tmp_path / "empty.html"
    proc = subprocess.run([str(CLI), "report", "--results", str(db), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    page = parse(out.read_text())
    assert any("holds no runs" in note for note in page.notes), page.notes
    assert not page.images and not page.rows
    assert {"header", "outcomes", "theory", "timelines", "comparison", "oom-map", "protection"} <= set(page.sections)


def test_no_results_file_is_one_line_not_a_traceback(tmp_path):
    proc = subprocess.run([str(CLI), "report", "--results", str(tmp_path / "none.sqlite")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("mshare-lab: error: no results file at ") and "Traceback" not in proc.stderr


def test_a_bad_runs_selector_is_a_user_error(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    ResultStore(db).close()
    assert main(["report", "--results", str(db), "--runs", "last:x", "-o", str(tmp_path / "x.html")]) == 2
    assert "last:N" in capsys.readouterr().err


def test_email_with_many_long_groups_keeps_72_columns_and_repeats_the_baseline():
    records = [_record(name, repeat=r, pte_ratio=1.0 + i / 10 + r / 100, region_pagetable_bytes=(50 << 20) * (i + 1),
                       throughput_tps=123456789.0 * (i + 1), protect_change_us=2.5e6 / (i + 1))
               for i, name in enumerate(["debian-6.1", "a-very-long-kernel-name-v3-rc2", "mshare-v4", "ptshare-v2"])
               for r in (1, 2)]
    text = format_email(compare(records, by="kernel"), lab_version="0.1.0 (git abc1234)",
                        commands=["mshare-lab run /a/rather/long/path/to/the/matrix/file/that/goes/on.yaml "
                                  "--results /var/lib/mshare-lab/main-job-20261201T101500Z.sqlite"])
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72
    headers = [line.split() for line in lines if line.strip().startswith("debian-6.1")]
    assert len(headers) == 3 and all(h[0] == "debian-6.1" for h in headers), "every block starts with the baseline"
    assert any(line.endswith("\\") for line in lines), "a long command is continued, not cut"
    joined = text.replace(" \\\n      ", " ")
    assert "matrix/file/that/goes/on.yaml --results /var/lib/mshare-lab/main-job-20261201T101500Z.sqlite" in joined


def test_junit_for_every_kind_of_outcome(tmp_path):
    records = [
        _record("k", expect={"outcome": "completed"}),
        _record("k", "oom", repeat=2, expect={"outcome": "completed"},
                failures=["outcome: expected completed, measured oom", "pte_ratio: expected at most 1.3, measured 1.8"]),
        _record("k", "infra-error", repeat=3),
        _record("k", "unsupported", repeat=4),
    ]
    out = junit.write(records, tmp_path / "j" / "junit.xml", suite="unit")
    suite = ET.parse(out).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("4", "1", "1", "1")
    cases = suite.findall("testcase")
    assert cases[0].find("failure") is None and cases[0].get("time") == "30.500"
    failure = cases[1].find("failure")
    assert failure.get("message") == "outcome: expected completed, measured oom"
    assert "- pte_ratio: expected at most 1.3, measured 1.8" in failure.text
    assert cases[2].find("error").get("type") == "infra-error"
    assert cases[3].find("skipped") is not None
    assert not list(out.parent.glob("*.partial"))


@pytest.mark.vm
def test_a_store_from_an_interrupted_run_reports_what_finished_and_what_did_not(tmp_path):
    testing.debian_kernel()
    matrix = tmp_path / "interrupted.yaml"
    matrix.write_text("""\
defaults: {kernels: debian-6.1, duration: 1, ram: 1G, timeout: 300, sga: 64M}
matrix:
  - {mechanisms: ptshare, clients: 4}
  - {mechanisms: shmem, clients: 20}
""")
    results = tmp_path / "results.sqlite"
    child = subprocess.Popen([str(CLI), "run", str(matrix), "--results", str(results)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        stored = 0
        while time.monotonic() < deadline and child.poll() is None and stored == 0:
            time.sleep(0.5)
            if results.exists():
                with ResultStore(results) as store:
                    stored = store.count()
        assert stored == 1, "the first scenario never finished"
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130
    out = tmp_path / "interrupted.html"
    assert main(["report", "--results", str(results), "-o", str(out)]) == 0
    page = parse(out.read_text())
    assert any("1 scenario(s) of " in note and "interrupted" in note for note in page.notes), page.notes
    assert "debian-6.1/shmem/64M/x20/ram1G#1" in " ".join(page.text)
    assert len(page.rows) == 1


def test_protection_effective_both_ways_shows_as_a_column_when_runs_have_it(tmp_path, capsys):
    db = tmp_path / "p.sqlite"
    with ResultStore(db) as store:
        store.add(_record("k", pte_ratio=1.01, protect_change_us=1.5e6,
                          protect_effective={"asked": 20, "acked": 20, "held": 20},
                          protect_back_effective={"asked": 20, "acked": 20, "held": 19}))
        store.add(_record("k", repeat=2, pte_ratio=1.02))      # an older run: no such fields
    out = tmp_path / "p.html"
    assert main(["report", "--results", str(db), "-o", str(out)]) == 0
    html = out.read_text()
    assert "<th>protection effective</th>" in html
    assert "read-only 20/20, back 19/20" in html
    assert parse(html).rows and "1.5 s" in html
