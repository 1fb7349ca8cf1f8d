"""The pytest plugin, driven by pytest itself (pytester).

The scenario executor here is a conftest implementing the plugin's
``pytest_mshare_run_scenario`` hook and returning synthetic RunRecords: these tests check
the plugin's collection, storing and assertion logic. The real run through the lab runner
and libvirt is the runner's end-to-end test (tests/lab), which uses this same plugin.
"""

from __future__ import annotations

import textwrap

import pytest

from mshare_lab.lab import matrix
from mshare_lab.results.store import ResultStore

pytest_plugins = ["pytester"]

MATRIX = """\
defaults: {kernels: debian-6.1, ram: 1G, duration: 1}
matrix:
  - name: growth
    mechanisms: [shmem, sysv]
    sga: 64M
    clients: [20, 40]
    expect: {outcome: completed, pte_ratio_max: 1.3}
  - mechanisms: hugetlb
    sga: 1G
    clients: 20
    ram: 2G
    expect: {sharing_verified: true}
"""

# the executor: shmem is fine, sysv at 40 clients grows too much, hugetlb hits an infra error
EXECUTOR = """\
from mshare_lab.errors import BootError
from mshare_lab.lab.record import RunRecord

def pytest_mshare_run_scenario(config, scenario, workdir, progress):
    progress("booting", workdir.name)
    w = scenario.workload
    if w.mechanism == "hugetlb":
        raise BootError("libvirt: domain did not start")
    ratio = 1.8 if (w.mechanism, w.clients) == ("sysv", 40) else 1.05
    return RunRecord(scenario, "completed", result={"pte_ratio": ratio, "clients_attached": w.clients},
                     started_at=1.0, finished_at=2.0, console_log=str(workdir / "console.log"))
"""


@pytest.fixture
def lab(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("MSHARE_LAB_HOME", str(tmp_path / "home"))
    pytester.makefile(".yaml", matrix=MATRIX)
    return pytester


def test_collected_ids_are_the_matrix_scenario_ids(lab):
    result = lab.runpytest("--mshare-matrix", "matrix.yaml", "--collect-only", "-q")
    expected = [s.scenario_id for s in matrix.load(lab.path / "matrix.yaml").scenarios]
    collected = [line.split("::", 1)[1] for line in result.outlines if line.startswith("matrix.yaml::")]
    assert collected == expected and len(expected) == 5


def test_expectations_pass_fail_and_infra_error(lab, tmp_path):
    lab.makeconftest(EXECUTOR)
    db = tmp_path / "results.sqlite"
    result = lab.runpytest("--mshare-matrix", "matrix.yaml", "--mshare-results", str(db), "-rfE")
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at setup of scenario debian-6.1/hugetlb/1G/x20/ram2G#1*",
        "infra-error, not a kernel result (run *): libvirt: domain did not start",
        "*FAILURES*",
        "scenario debian-6.1/sysv/64M/x40/ram1G#1 (run *): outcome completed",
        "  - pte_ratio: expected at most 1.3, measured 1.8",
    ])
    assert "Traceback" not in result.stdout.str()
    # live progress lines name the scenario
    result.stdout.fnmatch_lines(["*[[]debian-6.1/shmem/64M/x20/ram1G#1[]] booting debian-6.1_shmem_64M_x20_ram1G_1"])
    with ResultStore(db) as store:
        runs = {r.scenario_id: r for r in store.runs()}
    assert len(runs) == 5
    assert runs["debian-6.1/sysv/64M/x40/ram1G#1"].expectation_failures == [
        "pte_ratio: expected at most 1.3, measured 1.8"]
    assert runs["debian-6.1/shmem/64M/x20/ram1G#1"].expectation_failures == []
    assert runs["debian-6.1/hugetlb/1G/x20/ram2G#1"].outcome == "infra-error"
    assert runs["debian-6.1/shmem/64M/x20/ram1G#1"].console_log.endswith("console.log")


def test_keyword_selection_and_vm_marker(lab, tmp_path):
    lab.makeconftest(EXECUTOR)
    db = str(tmp_path / "r.sqlite")
    lab.runpytest("--mshare-matrix", "matrix.yaml", "--mshare-results", db, "-k", "shmem").assert_outcomes(passed=2)
    lab.runpytest("--mshare-matrix", "matrix.yaml", "--mshare-results", db, "-m", "not vm").assert_outcomes()


def test_bad_matrix_is_one_clear_collection_error(lab):
    lab.makefile(".yaml", matrix=MATRIX.replace("clients: [20, 40]", "clients: [20, forty]"))
    result = lab.runpytest("--mshare-matrix", "matrix.yaml")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*mshare-lab: *matrix.yaml:6: clients: 'forty' is not a whole number"])
    assert "Traceback" not in result.stdout.str()


def test_without_the_option_the_plugin_collects_nothing(lab):
    lab.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = lab.runpytest("-q")
    result.assert_outcomes(passed=1)
    assert "matrix.yaml" not in result.stdout.str()


def test_explicit_paths_run_alongside_the_matrix(lab, tmp_path):
    lab.makeconftest(EXECUTOR)
    lab.makepyfile(test_plain="def test_one():\n    assert True\n")
    result = lab.runpytest("test_plain.py", "--mshare-matrix", "matrix.yaml",
                           "--mshare-results", str(tmp_path / "r.sqlite"), "-k", "one or shmem")
    result.assert_outcomes(passed=3)


def test_session_fixtures_share_one_store(lab, tmp_path):
    db = tmp_path / "fixture.sqlite"
    lab.makepyfile(test_fixtures=textwrap.dedent(f"""\
        def test_store(mshare_lab_store):
            assert str(mshare_lab_store.path) == {str(db)!r}
            assert mshare_lab_store.count() == 0

        def test_same_store(mshare_lab_store, request):
            assert mshare_lab_store is request.getfixturevalue("mshare_lab_store")
        """))
    lab.runpytest("--mshare-results", str(db)).assert_outcomes(passed=2)
    assert db.exists()


REAL = """\
defaults: {kernels: debian-6.1, duration: 1, ram: 1G, timeout: 420}
matrix:
  - mechanisms: shmem
    sga: 32M
    clients: 10
    # 4 KiB shmem cannot share page tables: the ratio is near 1, so the second bound fails
    expect: {outcome: completed, clients_attached_min: 10, pte_ratio_max: 0.5}
"""


@pytest.mark.vm
@pytest.mark.slow
def test_real_scenario_through_the_runner(pytester, tmp_path):
    """One real guest (TCG, ~30-90 s): the default executor, a met and an unmet expectation."""
    import contextlib
    import os
    import re
    import shutil
    import subprocess

    pytester.makefile(".yaml", real=REAL)
    db = tmp_path / "real.sqlite"
    result = pytester.runpytest("--mshare-matrix", "real.yaml", "--mshare-results", str(db), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "scenario debian-6.1/shmem/32M/x10/ram1G#1 (run *): outcome completed",
        "  - pte_ratio: expected at most 0.5, measured *",
    ])
    with ResultStore(db) as store:
        (record,) = store.runs()
    try:
        # met: every client attached; unmet: only the ratio, and it is a real measurement
        assert record.outcome == "completed" and record.metric("clients_attached") == 10
        assert len(record.expectation_failures) == 1 and record.expectation_failures[0].startswith("pte_ratio")
        assert 0.5 < record.metric("pte_ratio") < 2.0 and record.guest_seconds > 0
        console = open(record.console_log, errors="replace").read()
        assert '"step":"poweroff"' in console         # the guest's own console, kept with the run
    finally:
        shutil.rmtree(record.artifacts_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(record.artifacts_dir))     # the session's dir, when now empty
    # the guest is gone: destroyed and undefined
    names = set(re.findall(r"boot (mshare-lab-\S+)", result.stdout.str()))
    assert names
    for name in names:
        state = subprocess.run(["virsh", "-c", "qemu:///system", "domstate", name], capture_output=True, text=True)
        assert state.returncode != 0, f"{name} still defined: {state.stdout}"
