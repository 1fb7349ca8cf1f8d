"""The report, the email comparison and JUnit from the store of a small real matrix run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from mshare_lab.cli import main
from mshare_lab.results.compare import compare
from mshare_lab.results.store import ResultStore
from mshare_lab.units import format_metric

from report_helpers import MATRIX, parse, png_of, require_chromium, variety

pytestmark = [pytest.mark.vm, pytest.mark.slow]
pytest_plugins = ["pytester"]

SECTIONS = ("header", "outcomes", "theory", "timelines", "comparison", "oom-map", "protection")
CLI = Path(sys.executable).parent / "mshare-lab"


@pytest.fixture(scope="module")
def report(lab_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "lab.html"
    started = time.monotonic()
    proc = subprocess.run([str(CLI), "report", "--results", str(lab_run.results), "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    print(f"report: {seconds:.2f} s, {out.stat().st_size} bytes")
    return out


def test_the_run_behaved_as_the_matrix_says(lab_run):
    with ResultStore(lab_run.results) as store:
        outcomes = {r.scenario_id: r.outcome for r in store.runs()}
    assert outcomes == {
        "debian-6.1/shmem/1G/x20/ram3G#1": "completed", "debian-6.1/shmem/1G/x20/ram3G#2": "completed",
        "debian-6.1/hugetlb/1G/x20/ram3G#1": "completed", "debian-6.1/hugetlb/1G/x20/ram3G#2": "completed",
        "debian-6.1/shmem/64M/x20/ram1G#1": "oom", "debian-6.1/ptshare/64M/x10/ram1G#1": "unsupported"}
    assert lab_run.returncode == 1, "the ptshare entry's expectation cannot be met on a stock kernel"


def test_every_section_and_figure_present_and_numbers_equal_the_store(lab_run, report):
    html = report.read_text()
    page = parse(html)
    assert [s for s in page.sections if s in SECTIONS] == list(SECTIONS)
    for key in SECTIONS[2:]:
        images = page.images.get(key)
        assert images and len(images) == 1, f"section {key} has no figure: {page.notes}"
        image = png_of(images[0])
        colours, inked = variety(image)
        assert image.width >= 400 and image.height >= 250, (key, image.size)
        assert colours >= 8 and inked > 0.02, (key, colours, inked)
    with ResultStore(lab_run.results) as store:
        records = store.runs()
        assert set(page.rows) == {r.run_id for r in records}
        checked = 0
        for record in records:
            stored = store.metrics(record.run_id)
            if record.outcome == "completed":
                # what every completed run measures; the protection change has a time only
                # when it held in every client (a write still going through is a verdict,
                # shown as "held N/M", not a time)
                measured = {"pte_ratio", "region_pagetable_bytes", "attach_populate_s", "throughput_tps"}
                ro = record.metric("protect_effective")
                if ro["held"] == ro["asked"]:
                    measured.add("protect_change_us")
                else:
                    assert "protect_change_us" not in stored and ro["held"] < ro["asked"], ro
                assert measured <= set(stored), (record.scenario_id, measured - set(stored))
            for cell in page.rows[record.run_id]:
                if cell.metric == "sharing_verified":
                    value = record.metric("sharing_verified")
                    assert cell.text == ("-" if value is None else "yes" if value else "no")
                    continue
                if cell.metric not in stored:
                    assert cell.text == "-" and cell.value == "", (record.scenario_id, cell)
                    continue
                assert float(cell.value) == stored[cell.metric], (record.scenario_id, cell)
                assert cell.text == format_metric(cell.metric, stored[cell.metric])
                checked += 1
    assert checked >= 4 * 4, "every completed run shows its measured numbers"
    text = " ".join(page.text)
    assert "tests/report/matrix.yaml" in text and "6.1.0-" in text and "mshare-lab 0.1" in text
    assert "tcg" in text or "kvm" in text
    assert "not met" in text and "outcome: expected completed, measured unsupported" in text


def test_nothing_from_the_network_and_no_script(report):
    page = parse(report.read_text())
    assert "script" not in page.tags
    remote = [u for u in page.urls if not u.startswith("data:") and "://" in u and not u.startswith("file:")]
    assert not remote, remote
    assert "http://" not in report.read_text() and "https://" not in report.read_text()


def test_the_page_in_a_real_headless_browser(report, tmp_path):
    chromium = require_chromium()
    shot = tmp_path / "report.png"
    # any fetch would go to a closed proxy port and every host name fails to resolve
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--enable-logging=stderr", "--v=0", "--window-size=1280,1600", "--virtual-time-budget=3000",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", report.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    assert "CONSOLE" not in log and "Uncaught" not in log, log[-2000:]
    assert "ERR_PROXY" not in log and "ERR_NAME_NOT_RESOLVED" not in log, "the page fetched something"
    from PIL import Image
    image = Image.open(shot)
    assert image.size == (1280, 1600)
    colours, inked = variety(image)
    assert colours > 200 and inked > 0.1, (colours, inked)
    # the DOM as the browser built it: every figure decoded (an img that failed has naturalWidth 0)
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={tmp_path / 'profile2'}",
         "--virtual-time-budget=3000", "--dump-dom", report.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and dom.stdout.count("<img") == 5, dom.stderr[-1000:]
    target = os.environ.get("MSHARE_LAB_REPORT_SCREENSHOT")
    if target:     # how docs/report.png is made: see docs/results.md
        # the header, the outcome table and the theory plot, small enough for the README (< 150 KB)
        small = image.resize((800, 1000), Image.LANCZOS).convert("P", palette=Image.ADAPTIVE)
        small.save(target, optimize=True)


def test_email_comparison_fits_72_columns_and_says_how_to_reproduce(lab_run, capsys):
    assert main(["compare", "--by", "mechanism", "--baseline", "shmem", "--format", "email",
                 "--results", str(lab_run.results)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 72, [line for line in lines if len(line) > 72]
    point = lines.index("debian-6.1/1G/x20/ram3G")
    assert lines[point + 1].split() == ["shmem", "hugetlb"] and lines[point + 2].split() == ["n=2", "n=2"]
    with ResultStore(lab_run.results) as store:
        result = compare(store.runs(), by="mechanism", baseline="shmem")
    row = result.row("debian-6.1/1G/x20/ram3G", "hugetlb", "region_pagetable_bytes")
    region_line = next(line for line in lines[point:] if line.startswith("region pgtables"))
    assert format_metric("region_pagetable_bytes", row.mean) in region_line
    assert f"({row.change_pct:+.1f}%)" in region_line
    assert region_line.endswith("*") == row.significant
    assert "(base)" in region_line
    assert any(line.startswith("mshare-lab 0.1") for line in lines)
    source = result_source(lab_run)
    commands = text.split("To reproduce:\n", 1)[1].replace(" \\\n", " ")
    assert f"mshare-lab run {source} --results {lab_run.results}\n" in " ".join(commands.split(" ")).replace("      ", "")
    assert "  mshare-lab kernel fetch debian" in lines
    assert any("mshare-lab compare --by mechanism --baseline shmem" in line for line in lines)


def test_run_junit_xml_one_case_per_scenario_failures_for_unmet_expectations(lab_run):
    root = ET.parse(lab_run.junit).getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    with ResultStore(lab_run.results) as store:
        records = {r.scenario_id: r for r in store.runs()}
    assert {c.get("name") for c in cases} == set(records)
    assert suite.get("tests") == "6" and suite.get("failures") == "1" and suite.get("errors") == "0"
    for case in cases:
        record = records[case.get("name")]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert props["run_id"] == record.run_id and props["outcome"] == record.outcome
        assert abs(float(case.get("time")) - record.wall_seconds) < 0.01
        failure = case.find("failure")
        if record.expectation_failures:
            assert failure is not None
            assert failure.get("message") == record.expectation_failures[0]
            assert failure.get("message").startswith("outcome: expected completed, measured unsupported")
        else:
            assert failure is None


def test_pytest_plugin_through_pytests_own_junitxml(lab_run, pytester, tmp_path):
    """The plugin's items under --junitxml: the executor replays this session's real records."""
    pytester.makeconftest(f"""
        import copy
        from mshare_lab.results.store import ResultStore

        with ResultStore({str(lab_run.results)!r}) as _store:
            RECORDS = {{r.scenario_id: r for r in _store.runs()}}

        def pytest_mshare_run_scenario(config, scenario, workdir, progress):
            record = copy.deepcopy(RECORDS[scenario.scenario_id])
            record.run_id = None
            record.expectation_failures = []
            return record
    """)
    xml = tmp_path / "pytest.xml"
    result = pytester.runpytest("-p", "no:cacheprovider", "--mshare-matrix", str(MATRIX),
                                "--mshare-results", str(tmp_path / "replay.sqlite"), f"--junitxml={xml}")
    result.assert_outcomes(passed=5, failed=1)
    cases = ET.parse(xml).getroot().iter("testcase")
    by_name = {c.get("name"): c for c in cases}
    assert len(by_name) == 6 and "debian-6.1/hugetlb/1G/x20/ram3G#2" in by_name
    failed = by_name["debian-6.1/ptshare/64M/x10/ram1G#1"].find("failure")
    assert failed is not None and "outcome: expected completed, measured unsupported" in failed.get("message")
    props = {p.get("name"): p.get("value") for p in by_name["debian-6.1/ptshare/64M/x10/ram1G#1"].iter("property")}
    assert props["outcome"] == "unsupported" and props["run_id"]


def test_only_unsupported_runs_make_a_report_that_says_so(lab_run, tmp_path, capsys):
    out = tmp_path / "unsupported.html"
    assert main(["report", "--results", str(lab_run.results), "--runs", "*/ptshare/*", "-o", str(out)]) == 0
    page = parse(out.read_text())
    assert any("Every run ended 'unsupported'" in note for note in page.notes), page.notes
    assert len(page.rows) == 1
    # what the attempt left (its time series, its cell on the OOM map) is drawn; the figures
    # of measurements say in a sentence why they are empty
    assert set(page.images) == {"timelines", "oom-map"}
    assert sum(note.startswith("No run") for note in page.notes) == 3, page.notes


def test_results_show_in_human_units(lab_run, capsys):
    with ResultStore(lab_run.results) as store:
        record = next(r for r in store.runs() if r.outcome == "completed")
    assert main(["results", "show", record.run_id, "--results", str(lab_run.results)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("throughput_tps"))
    assert "tx/s" in line
    line = next(line for line in out.splitlines() if line.strip().startswith("protect_change_us"))
    assert line.split()[1:3][1] in ("ms", "s", "µs"), line
    assert " s, guest " in out or " min " in out


def result_source(lab_run) -> str:
    """The matrix path as the run recorded it (the fixture passes it absolute)."""
    with ResultStore(lab_run.results) as store:
        return store.runs()[0].scenario.source.rsplit(":", 1)[0]
