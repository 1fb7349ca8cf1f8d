"""The runner with real guests: a matrix end to end, a hang, a panic, and Ctrl-C/SIGTERM."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mshare_lab import paths
from mshare_lab.guest import testing
from mshare_lab.guest.libvirt_driver import LibvirtDriver
from mshare_lab.lab.runner import run_scenario
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec
from mshare_lab.results.store import ResultStore

pytestmark = pytest.mark.vm

MATRIX = """\
defaults:
  kernels: debian-6.1
  duration: 1
  ram: 1G
  timeout: 400
matrix:
  - name: small
    mechanisms: [shmem, sysv]
    sga: 32M
    clients: 10
    expect: {outcome: completed, clients_attached_min: 10}
"""


@pytest.fixture
def driver():
    with LibvirtDriver() as drv:
        yield drv
        drv.remove_scratch()


@pytest.fixture
def workdir():
    path = testing.lab_scratch("runner-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _assert_nothing_left(driver: LibvirtDriver) -> None:
    import os
    left = testing.leftovers(os.getpid(), run_ids={driver.run_id})
    assert not left.domains and not left.qemu_processes, left
    scratch = paths.lab_home() / "scratch" / driver.run_id
    assert not scratch.exists() or not [p for p in scratch.iterdir() if p.name != "owner.json"], \
        "per-run initrds are removed with their guest"


CLI_MATRIX = """\
defaults:
  kernels: debian-6.1
  duration: 1
  ram: 1G
  timeout: 400
  sga: 32M
  clients: 10
matrix:
  - name: met
    mechanisms: shmem
    expect: {outcome: completed, clients_attached_min: 10}
  - name: not-met
    mechanisms: sysv
    expect: {pte_ratio_max: 0.01}
"""


@pytest.mark.slow
def test_cli_run_in_parallel_stores_records_prints_the_table_and_exits_1_on_unmet_expectations(tmp_path):
    matrix = tmp_path / "m.yaml"
    matrix.write_text(CLI_MATRIX)
    results = tmp_path / "results.sqlite"
    cli = Path(sys.executable).parent / "mshare-lab"
    child = subprocess.Popen([str(cli), "run", str(matrix), "--parallel", "2", "--results", str(results)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=900)
    assert child.returncode == 1, err
    # live progress: scenario i/N, elapsed, id, phase
    assert re.search(r"^\[1/2 [\dms]+\] debian-6\.1/shmem/32M/x10/ram1G#1: boot: run", err, re.M), err
    assert re.search(r"^\[2/2 .*sysv.*: completed, 1 expectation\(s\) NOT met", err, re.M), err
    table = out.splitlines()
    assert table[0].split()[:3] == ["scenario", "outcome", "pte_ratio"]
    # the stock kernel's log is clean (the kernel_log column)
    assert re.match(r"debian-6\.1/shmem/32M/x10/ram1G#1 +completed +\d\.\d{3} +no +[\d,]+ tx/s +[\d.]+ (?:µs|ms|s) +clean +met$",
                    table[1])
    assert "FAILED: pte_ratio: expected at most 0.01, measured" in table[2]
    assert "2 scenario(s): 2 completed; 1 with unmet expectations" in out
    with ResultStore(results) as store:
        records = store.runs()
        assert sorted(r.scenario.workload.mechanism for r in records) == ["shmem", "sysv"]
        for record in records:
            assert record.outcome == "completed", record.reason
            assert record.result["clients_attached"] == 10
            assert record.result["kernel_release"] == record.kernel_metadata["release"]
            assert 0 < record.guest_seconds < record.wall_seconds
            assert record.attempts == 1
            assert record.kernel_log.clean and record.kernel_log.source == "dmesg", record.kernel_log
            assert record.result["protect_effective"] == {"asked": 10, "acked": 10, "held": 10}
            assert Path(record.console_log).read_text().count("MSHARE-LAB-PROGRESS") > 3
            assert (Path(record.artifacts_dir) / "result.json").exists()
            assert max(v for _, v in store.timeseries(record.run_id)["qemu_rss_bytes"]) > 32 << 20
        failures = {r.scenario.workload.mechanism: r.expectation_failures for r in records}
        assert failures["shmem"] == [] and len(failures["sysv"]) == 1
    assert testing.leftovers(child.pid).empty


def _scenario(timeout: float, memory: int = 512 << 20) -> Scenario:
    return Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=16 << 20, clients=2, duration=1),
                    guest=GuestShape(memory=memory, vcpus=1, timeout=timeout))


def test_a_guest_that_never_finishes_is_a_hang_with_its_console_tail(driver, workdir):
    base = testing.tiny_initrd('echo "HANG-MARKER before sleeping"\nwhile :; do sleep 1; done',
                               workdir / "hang-base.gz")
    started = time.monotonic()
    record = run_scenario(_scenario(timeout=30), driver=driver, workdir=workdir / "run", base_initrd=base)
    assert record.outcome == "guest-hang"
    assert "within 30 s" in record.reason
    # the reason ends with the console's last lines (on an idle host: the marker line; on a
    # host loaded enough that the quiet kernel printed nothing yet: it says so)
    console = [line for line in Path(record.console_log).read_text().splitlines() if line.strip()]
    expected_end = console[-1] if console else "(nothing on the console)"
    assert record.reason.endswith(expected_end), (record.reason, console[-3:])
    assert 30 <= record.guest_seconds < 75, record.guest_seconds
    assert record.attempts == 1, "a hang is a kernel result: not retried"
    assert time.monotonic() - started < 120
    _assert_nothing_left(driver)


def test_a_kernel_panic_is_a_guest_panic(driver, workdir):
    base = testing.tiny_initrd("echo c > /proc/sysrq-trigger\nwhile :; do sleep 1; done", workdir / "panic-base.gz")
    record = run_scenario(_scenario(timeout=120), driver=driver, workdir=workdir / "run", base_initrd=base)
    assert record.outcome == "guest-panic", record.reason
    assert record.reason.startswith("kernel panic: ")
    assert record.guest_seconds < 120, "panic=-1 reboots and on_reboot=destroy ends the guest"
    _assert_nothing_left(driver)


def test_a_guest_without_a_report_is_an_infra_error_retried_once(driver, workdir):
    base = testing.tiny_initrd("echo NOTHING-TO-SAY\npoweroff -f", workdir / "silent-base.gz")
    lines: list[str] = []
    record = run_scenario(_scenario(timeout=120), driver=driver, workdir=workdir / "run", base_initrd=base,
                          progress=lines.append)
    assert record.outcome == "infra-error" and "without a report" in record.reason
    assert record.attempts == 2
    assert any(line.startswith("infra error, retrying once") for line in lines)
    assert (workdir / "run" / "attempt1-console.log").exists()
    _assert_nothing_left(driver)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupting_mshare_lab_run_mid_boot_leaves_nothing(tmp_path, signum):
    testing.debian_kernel()
    matrix = tmp_path / "m.yaml"
    matrix.write_text(MATRIX)
    results = tmp_path / "results.sqlite"
    before_runs = {p.name for p in paths.runs_dir().iterdir()}
    cli = Path(sys.executable).parent / "mshare-lab"
    child = subprocess.Popen([str(cli), "run", str(matrix), "--parallel", "2", "--results", str(results)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_ids: set[str] = set()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and child.poll() is None:
            seen = testing.leftovers(child.pid)
            if seen.qemu_processes:
                run_ids |= set(seen.scratch_dirs)
                break
            time.sleep(0.3)
        assert run_ids, "the run never started a guest"
        time.sleep(2)   # mid-boot: QEMU up, guest kernel starting
        child.send_signal(signum)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert "interrupted" in err
    left = testing.leftovers(child.pid, run_ids=run_ids)
    assert left.empty, left
    # no run artifacts of the interrupted scenarios, nothing stored
    for run_id in run_ids:
        run_dir = paths.runs_dir() / run_id
        assert not run_dir.exists() or not any(run_dir.iterdir())
    with ResultStore(results) as store:
        assert store.count() == 0
    # no run directory appeared for the interrupted run (other users may add their own)
    assert not ({p.name for p in paths.runs_dir().iterdir()} - before_runs) & run_ids


def test_kernel_oom_kills_without_a_workload_report_make_an_oom_outcome(driver, workdir):
    # the init itself exhausts the guest's RAM; the kernel's OOM killer takes the hog and
    # the init powers off without sending any frame: only the kernel log tells
    base = testing.tiny_initrd("echo 1 > /proc/sys/vm/overcommit_memory\n"
                               "(tail /dev/zero) ; echo HOG-ENDED\npoweroff -f", workdir / "oom-base.gz")
    # a small guest fills up quickly even under software emulation
    record = run_scenario(_scenario(timeout=180, memory=192 << 20), driver=driver, workdir=workdir / "run",
                          base_initrd=base)
    assert record.outcome == "oom", record.reason
    assert "the OOM killer killed" in record.reason and "tail x1" in record.reason
    assert "HOG-ENDED" in Path(record.console_log).read_text()
    _assert_nothing_left(driver)


def test_a_global_oom_stops_the_run_at_the_first_kill(driver, workdir):
    # The main job's pagetable-oom point: 3000 clients of 128 MiB of shmem need ~1 GiB of
    # page tables in a 512 MiB guest with no memory limit, so the guest-wide OOM killer
    # fires while the coordinator is still forking.  The OOM watcher sees the clients'
    # memory.events move and kills their process group; memory.oom.group makes the kernel's
    # own kill take the group too.  Before, the killer took one client every ~2 s and the
    # run hit its timeout after hundreds of kills.
    scenario = Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=128 << 20, clients=3000, duration=1),
                        guest=GuestShape(memory=512 << 20, vcpus=2, timeout=400))
    record = run_scenario(scenario, driver=driver, workdir=workdir / "run")
    assert record.outcome == "oom", record.reason
    kills = record.result["oom_kills"]
    assert kills["group"] is True and kills["group_kills"] == 1, kills
    assert kills["first_seen_phase"] == "attach" and kills["first_seen_s"] > 0, kills
    assert kills["watcher_wakeups"] > 0 and kills["watcher_last_awake_s"] > 0, kills
    started = record.result["clients_started"]
    # the run stopped at the first kill: the OOM killer did not work through the clients
    assert 1 <= kills["cgroup_oom_kill"] <= kills["vmstat_oom_kill_delta"] < started / 10, (kills, started)
    assert record.result["memory_cgroup"]["limit_bytes"] is None
    assert record.reason.startswith(f"OOM kill at {kills['first_seen_s']:.1f} s (attach, {started} of 3000 "
                                    "clients started)"), record.reason
    assert "(memory.oom.group)" in record.reason
    # the kernel's own word for it (group_kills above is its memory.events count; the
    # dmesg ring may have lost the KERN_INFO group notice under the OOM's task dumps)
    assert "Out of memory: Killed process" in Path(record.console_log).read_text()
    _assert_nothing_left(driver)


def test_a_256_mib_guest_gets_through_the_kernel_probe(driver, workdir):
    # The probe maps a region in six processes to see whether MAP_SHARED_PT shares page
    # tables. At 128 MiB it filled a 256 MiB guest's /dev/shm and the guest hung in reclaim
    # until the timeout; the region is now a quarter of MemAvailable when that is less.
    scenario = Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=16 << 20, clients=10, duration=1),
                        guest=GuestShape(memory=256 << 20, vcpus=1, timeout=150))
    record = run_scenario(scenario, driver=driver, workdir=workdir / "run")
    assert record.outcome == "completed", record.reason
    probe = json.loads((Path(record.artifacts_dir) / "probe.json").read_text())
    ptshare = probe["mechanisms"]["ptshare"]
    mapped = int(re.search(r"mapping (\d+) MiB", ptshare["reason"]).group(1))
    assert 16 <= mapped < 128 and mapped % 2 == 0, ptshare
    _assert_nothing_left(driver)
