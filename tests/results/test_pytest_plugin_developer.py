"""The plugin for a patch developer: the ``mshare_lab`` fixture and ``--mshare-kernel``.

Driven by pytest itself (pytester). The executor is a conftest implementing
``pytest_mshare_run_scenario`` with synthetic RunRecords (as in test_pytest_plugin.py):
these tests check how the fixture builds, judges, stores and exposes one scenario, and
how --mshare-kernel retargets a matrix. One real guest run through the fixture is the
last test.
"""

from __future__ import annotations

import textwrap

import pytest

from mshare_lab.kernel import store
from mshare_lab.kernel.artifact import write_metadata
from mshare_lab.results.store import ResultStore

pytest_plugins = ["pytester"]

# shmem shares nothing (ratio ~1), the developer's "mshare" mechanism shares page tables
EXECUTOR = """\
from mshare_lab.lab.record import RunRecord

def pytest_mshare_run_scenario(config, scenario, workdir, progress):
    w = scenario.workload
    ratio = 0.02 if w.mechanism == "hugetlb" else 1.04
    return RunRecord(scenario, "completed", result={"pte_ratio": ratio, "clients_attached": w.clients,
                                                    "latency_us": {"p99": 420.0}},
                     started_at=1.0, finished_at=2.0)
"""

DEVELOPER_TESTS = """\
import pytest

def test_hugetlb_shares(mshare_lab):
    r = mshare_lab(mechanism="hugetlb", sga="64M", clients=20, ram="1G", duration=1)
    assert r.outcome == "completed" and r.clients_attached == 20
    assert r.pte_ratio < 0.05
    assert r.metric("latency_us.p99") == 420.0 and r.scenario.kernel == "{kernel}"

def test_shmem_does_not(mshare_lab):
    r = mshare_lab(mechanism="shmem", sga="64M", clients=20, ram="1G", duration=1)
    assert r.pte_ratio < 0.05

def test_expect_is_judged(mshare_lab):
    mshare_lab(mechanism="shmem", sga="64M", clients=20, ram="1G", duration=1, expect={{"pte_ratio_max": 0.5}})

def test_unknown_metric_names_the_known(mshare_lab):
    r = mshare_lab(mechanism="shmem", sga="64M", clients=20, ram="1G", duration=1)
    r.no_such_metric

def test_bad_key_is_the_matrix_error(mshare_lab):
    mshare_lab(mechanism="shmem", sga="64M", clients="many")
"""


def _register_fake_kernel(name: str) -> None:
    """A registered artifact in the test's own lab home (the executor never boots it)."""
    digest = "f" * 32
    with store.staging(digest) as stage:
        (stage / "bzImage").write_bytes(b"not a kernel")
        write_metadata(stage, {"name": name, "kind": "built", "release": "6.12.0-dev", "mechanisms": {},
                               "content_hash": digest})
    store.alias(name, digest)


@pytest.fixture
def lab(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("MSHARE_LAB_HOME", str(tmp_path / "home"))
    pytester.makeconftest(EXECUTOR)
    return pytester


def test_fixture_runs_judges_and_stores_one_scenario(lab, tmp_path):
    lab.makepyfile(test_dev=DEVELOPER_TESTS.format(kernel="debian-6.1"))
    db = tmp_path / "dev.sqlite"
    result = lab.runpytest("--mshare-results", str(db), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=4)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["*assert 1.04 < 0.05*"])                     # the developer's assertion
    result.stdout.fnmatch_lines(["*pte_ratio: expected at most 0.5, measured 1.04*"])
    result.stdout.fnmatch_lines(["*has no metric 'no_such_metric'; it has: clients_attached, latency_us, pte_ratio*"])
    result.stdout.fnmatch_lines(["*clients: 'many' is not a whole number*"])
    assert "test_dev.py::test_hugetlb_shares PASSED" in out or "1 passed" in out
    with ResultStore(db) as runs:
        stored = runs.runs()
    # every run that happened is stored (the bad-key call never ran)
    assert sorted(r.scenario_id for r in stored) == sorted(
        ["debian-6.1/hugetlb/64M/x20/ram1G#1"] + ["debian-6.1/shmem/64M/x20/ram1G#1"] * 3)


def test_mshare_kernel_names_the_kernel_of_fixture_and_matrix(lab, tmp_path):
    _register_fake_kernel("my-patch-v3")
    lab.makepyfile(test_dev=DEVELOPER_TESTS.format(kernel="my-patch-v3"))
    lab.makefile(".yaml", matrix="defaults: {kernels: debian-6.1, ram: 1G, duration: 1}\n"
                                 "matrix:\n  - mechanisms: [shmem, sysv]\n    sga: 64M\n    clients: 20\n")
    db = str(tmp_path / "k.sqlite")
    collected = lab.runpytest("--mshare-matrix", "matrix.yaml", "--mshare-kernel", "my-patch-v3",
                              "--collect-only", "-q", "matrix.yaml")
    ids = [line.split("::", 1)[1] for line in collected.outlines if line.startswith("matrix.yaml::")]
    assert ids == ["my-patch-v3/shmem/64M/x20/ram1G#1", "my-patch-v3/sysv/64M/x20/ram1G#1"]
    lab.runpytest("--mshare-kernel", "my-patch-v3", "--mshare-results", db, "-k", "hugetlb",
                  "test_dev.py").assert_outcomes(passed=1)


def test_mshare_kernel_source_path_is_built_under_a_derived_name(lab):
    """A source path is named pytest-<name> at collection (the build happens at the first run)."""
    lab.makefile(".yaml", matrix="matrix:\n  - kernels: debian-6.1\n    mechanisms: shmem\n    sga: 64M\n"
                                 "    clients: 20\n    ram: 1G\n")
    collected = lab.runpytest("--mshare-matrix", "matrix.yaml", "--collect-only", "-q",
                              "--mshare-kernel", "/usr/src/linux-source-6.12.tar.xz")
    collected.stdout.fnmatch_lines(["*matrix.yaml::pytest-linux-source-6.12/shmem/64M/x20/ram1G#1"])


@pytest.mark.vm
@pytest.mark.slow
def test_fixture_runs_a_real_guest(pytester, tmp_path):
    """One real micro guest (TCG, ~30-90 s) on the stock kernel, asserted by the developer's test."""
    pytester.makepyfile(test_real=textwrap.dedent("""\
        def test_shmem_on_debian(mshare_lab):
            r = mshare_lab(mechanism="shmem", sga="32M", clients=10, ram="1G", duration=1, timeout=420)
            assert r.outcome == "completed" and r.clients_attached == 10
            # 4 KiB shmem shares no page tables: about one table per client, a real measurement
            assert 0.5 < r.pte_ratio < 2.0 and r.guest_seconds > 0
        """))
    db = tmp_path / "real.sqlite"
    result = pytester.runpytest("--mshare-results", str(db), "-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    with ResultStore(db) as runs:
        (record,) = runs.runs()
    assert record.outcome == "completed" and record.scenario.kernel == "debian-6.1"
