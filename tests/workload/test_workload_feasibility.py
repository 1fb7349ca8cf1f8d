"""Refuse the impossible at once: local runs, matrix scenarios, the calibrated predictor.

The 1,000,000-client run that once took the host down is started for real, inside a
cgroup that allows 40 processes: it must be refused in well under a second, exit 2,
with the numbers and the largest client count that fits, and without forking.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from mshare_lab.errors import ConfigError, LimitError
from mshare_lab.lab.matrix import loads
from mshare_lab.lab.runner import check_feasible
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec
from mshare_lab.results.store import ResultStore
from mshare_lab.workload.calibration import measured_cost
from mshare_lab.workload.feasibility import ClientCost, HostLimits, check_local, check_scenario

from cgroup_limits import limited

MiB, GiB = 1 << 20, 1 << 30


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mshare_lab.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


@pytest.mark.skipif(sys.platform != "linux", reason="cgroups")
def test_a_million_clients_are_refused_at_once_without_forking():
    with limited("million", pids=40, memory=512 << 20) as enter:
        started = time.monotonic()
        proc = _cli("local", "--sga", "32M", "--clients", "1000000", preexec_fn=enter)
        elapsed = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "1000000 clients x 32.0 MiB shmem needs" in line and "Traceback" not in line, line
    fits = int(re.search(r"at most (\d+) clients fit", line).group(1))
    assert 0 < fits < 1000000
    # Python start-up included; the check itself is arithmetic on /proc
    assert elapsed < 1.0, elapsed


def test_the_largest_count_that_fits_does_fit_and_one_more_does_not():
    limits = HostLimits(mem_available=2 * GiB, running=300, pid_max=4 << 20, threads_max=1 << 20,
                        max_map_count=65530, root=True)
    cost = ClientCost(200 << 10, "measured", ("r1",))
    with pytest.raises(LimitError) as refused:
        check_local(WorkloadSpec(sga=256 * MiB, clients=100000), cost, limits)
    fits = int(re.search(r"at most (\d+) clients fit", str(refused.value)).group(1))
    # shmem at 4 KiB: 256 MiB / 4 KiB x 8 B x 513/512 = 513 KiB private page tables per client
    assert fits == (2 * GiB - 256 * MiB) // ((200 << 10) + 525312)
    check_local(WorkloadSpec(sga=256 * MiB, clients=fits), cost, limits)
    with pytest.raises(LimitError):
        check_local(WorkloadSpec(sga=256 * MiB, clients=fits + 1), cost, limits)


def test_pids_are_never_allowed_past_what_a_kernel_can_make():
    limits = HostLimits(mem_available=1 << 50, running=500, pid_max=32768, threads_max=100000,
                        max_map_count=65530, root=False)
    with pytest.raises(LimitError, match=r"kernel.pid_max 32768 is too small.*sysctl kernel.pid_max=40564"):
        check_local(WorkloadSpec(sga=MiB, clients=40000, memory_limit=GiB), limits=limits)
    # root may raise pid_max by what the run needs, but never beyond PID_MAX_LIMIT
    root = HostLimits(**{**limits.__dict__, "root": True})
    check_local(WorkloadSpec(sga=MiB, clients=40000, memory_limit=GiB), limits=root)
    with pytest.raises(LimitError, match="more than any kernel.pid_max allows"):
        check_local(WorkloadSpec(sga=MiB, clients=5_000_000, memory_limit=GiB), limits=root)
    # a scenario meant to OOM may exceed RAM, never the pid limit
    oom = Scenario("debian-6.1", WorkloadSpec(sga=128 * MiB, clients=5_000_000), GuestShape(memory=512 * MiB),
                   expect={"outcome": ["oom"]}, source="m.yaml:3")
    with pytest.raises(LimitError, match="m.yaml:3"):
        check_scenario(oom, ClientCost.builtin())


def test_a_scenario_meant_to_oom_may_exceed_guest_ram_others_may_not():
    spec = WorkloadSpec(sga=128 * MiB, clients=3000)
    meant = Scenario("debian-6.1", spec, GuestShape(memory=512 * MiB), expect={"outcome": ["oom"]}, source="m:1")
    check_scenario(meant)
    not_meant = Scenario("debian-6.1", spec, GuestShape(memory=512 * MiB), expect={"outcome": ["completed"]},
                         source="m.yaml:7")
    with pytest.raises(LimitError, match=r"m.yaml:7: .*3000 clients x 128.0 MiB shmem needs .*at most \d+ clients fit"):
        check_scenario(not_meant)
    # the same point shares its page tables under msharefs: one copy, and it fits in 1280 MiB
    check_scenario(Scenario("k", WorkloadSpec(mechanism="msharefs-ioctl", sga=512 * MiB, clients=800),
                            GuestShape(memory=1280 * MiB)), ClientCost(180 << 10, "measured", ("r",)))


def test_impossible_expectations_and_scenarios_are_rejected_at_load_with_file_and_line():
    head = "defaults: {kernels: debian-6.1, ram: 1G}\nmatrix:\n"
    cases = [
        ("  - mechanisms: shmem\n    sga: 64M\n    clients: 10\n"
         "    expect:\n      pte_ratio_max: 1\n      pte_ratio_min: 2\n", 8, "pte_ratio_min 2 is above pte_ratio_max 1"),
        ("  - mechanisms: shmem\n    sga: 64M\n    clients: 10\n"
         "    expect: {clients_attached_min: 50}\n", 6, "clients_attached_min 50 is more than the 10 clients"),
        ("  - mechanisms: hugetlb\n    sga: 3G\n    clients: 10\n", 4, "3.0 GiB hugetlb region cannot fit in a 1.0 GiB"),
    ]
    for body, line, message in cases:
        with pytest.raises(ConfigError) as err:
            loads(head + body, "m.yaml")
        assert f"m.yaml:{line}:" in str(err.value) and message in str(err.value), str(err.value)
    # meant to OOM: accepted
    loads(head + "  - mechanisms: hugetlb\n    sga: 3G\n    clients: 10\n    expect: {outcome: oom}\n", "m.yaml")


def test_a_huge_matrix_is_refused_with_its_size_and_time_unless_asked():
    text = ("defaults: {kernels: debian-6.1, ram: 4G}\nmatrix:\n  - mechanisms: [shmem, sysv, thp]\n"
            "    sga: [32M, 64M, 128M, 256M, 512M]\n    clients: [10, 20, 40, 80, 100, 200, 400, 800, 1000, 2000]\n"
            "    repeats: 50\n")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"m.yaml:2: the matrix expands to 7,500 scenarios \(about \d+ days"):
        loads(text, "m.yaml")
    assert time.monotonic() - started < 0.5, "refused before expanding"
    assert len(loads(text, "m.yaml", max_scenarios=None)) == 7500


def test_predict_and_preflight_use_the_cost_measured_on_that_kernel(tmp_path):
    from mshare_lab.lab.record import RunRecord
    db = tmp_path / "results.sqlite"
    with ResultStore(db) as store:
        ids = []
        for i, per_client in enumerate((300 << 10, 310 << 10, 290 << 10)):
            scenario = Scenario("k-measured", WorkloadSpec(clients=100), GuestShape(memory=GiB))
            ids.append(store.add(RunRecord(scenario, "completed", started_at=1_800_000_000.0 + i,
                                           result={"client_cost": {"per_client_bytes": per_client}})))
        debian = Scenario("k-measured", WorkloadSpec(clients=100), GuestShape(memory=GiB, image="debian"))
        store.add(RunRecord(debian, "completed", started_at=1_800_000_100.0,
                            result={"client_cost": {"per_client_bytes": 900 << 10}}))
        cost = measured_cost(store, "k-measured", "micro")
        assert cost.per_client_bytes == 300 << 10 and cost.source == "measured"
        assert set(cost.runs) == set(ids)
        assert measured_cost(store, "k-measured", "debian").per_client_bytes == 900 << 10
        assert measured_cost(store, "never-run").source == "built-in estimate"
        # preflight: 3000 clients x 300 KiB is more than a 512M guest, with the built-in estimate it is not
        spec = WorkloadSpec(mechanism="msharefs-ioctl", sga=16 * MiB, clients=1500)
        scenario = Scenario("k-measured", spec, GuestShape(memory=512 * MiB), source="m.yaml:4")
        said: list[str] = []
        with pytest.raises(LimitError, match="300.0 KiB per client \\(measured\\)"):
            check_feasible([scenario], store, said.append)
        assert any("median of 3 run(s)" in line for line in said), said
        check_feasible([Scenario("unmeasured", spec, GuestShape(memory=512 * MiB))], store)
    out = _cli("predict", "--sga", "16M", "--clients", "1700", "--ram", "512M", "--mechanism", "msharefs-ioctl",
               "--kernel", "k-measured", "--results", str(db))
    assert out.returncode == 0, out.stderr
    assert "300.0 KiB per client (measured, median of 3 run(s): " in out.stdout
    assert all(run_id in out.stdout for run_id in ids)
    assert "does NOT fit" in out.stdout and "shared page tables / RAM" in out.stdout
    estimate = _cli("predict", "--sga", "16M", "--clients", "1500", "--ram", "512M", "--kernel", "other",
                    "--results", str(db))
    assert "(built-in estimate: no run measured it)" in estimate.stdout
