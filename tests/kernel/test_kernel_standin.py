"""The CI kernel's stand-ins and report trigger, end to end in micro guests.

The one CI kernel build (``marker_kernel``) carries a test-only series of the project's
own (fixtures/marker-series.mbox, patches 3-4): a msharefs with the 2024 ioctl ABI whose
regions are plain shmem files, the MAP_SHARED_PT flag definition, and
/proc/sys/debug/mshare_lab_trigger, which emits kernel-log reports on demand. So every
patched-mechanism path of the lab runs here: detection from the tree, metadata, workload
flags, attach, measurement, the verdict "interface present but page tables not shared",
the owner's protection change proven (it does not reach the clients), the kernel-log
summary with phases, and a crash title from a real oops.

Three guests boot once for the module (about a minute of guest time under TCG); the
tests only read what they left.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mshare_lab.guest import testing
from mshare_lab.guest.libvirt_driver import LibvirtDriver
from mshare_lab.lab import expectations
from mshare_lab.lab.kernel_log import SymbolMap
from mshare_lab.lab.runner import run_scenario
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec
from mshare_lab.results.store import ResultStore
from mshare_lab.workload.build import kernel_flags

pytestmark = [pytest.mark.kernel_build, pytest.mark.vm, pytest.mark.slow]

TRIGGER = "debug.mshare_lab_trigger"


def _scenario(mechanism: str, *sysctls: str, clients: int = 6) -> Scenario:
    return Scenario(kernel="test-marker-6.12",
                    workload=WorkloadSpec(mechanism=mechanism, sga=32 << 20, clients=clients, duration=1),
                    guest=GuestShape(memory=512 << 20, vcpus=2, timeout=300, sysctls=sysctls))


@pytest.fixture(scope="module")
def runs(marker_kernel, tmp_path_factory):
    """name -> RunRecord (stored and read back) for the three guests of this module."""
    scenarios = {
        # the owner creates the region in the "resources" phase: WARN, two rss and one
        # pgtables line from there
        "ioctl": _scenario("msharefs-ioctl", f"{TRIGGER}=create:warn,rss,rss,pgtables"),
        "ptshare": _scenario("ptshare"),
        # the probe reads mshare_info first: a NULL pointer write there, oops=panic
        "crash": _scenario("msharefs-ioctl", f"{TRIGGER}=info:oops", clients=2),
    }
    workdir = testing.lab_scratch("standin-")
    store = ResultStore(tmp_path_factory.mktemp("standin") / "results.sqlite")
    out = {}
    try:
        with LibvirtDriver() as driver:
            try:
                for name, scenario in scenarios.items():
                    record = run_scenario(scenario, driver=driver, workdir=workdir / name, progress=print)
                    record.expectation_failures = expectations.check(scenario.expect, record)
                    out[name] = store.get(store.add(record))
                    out[name].console_text = Path(record.console_log).read_text(errors="replace")
                    dmesg = Path(record.artifacts_dir) / "dmesg.txt"
                    out[name].dmesg_text = dmesg.read_text(errors="replace") if dmesg.exists() else ""
            finally:
                driver.remove_scratch()
        yield out
    finally:
        store.close()
        shutil.rmtree(workdir, ignore_errors=True)


def test_detection_and_flags_from_the_patched_tree(marker_kernel):
    mechanisms = marker_kernel.artifact.mechanisms
    assert mechanisms["msharefs-ioctl"] == {"abi": "2024"}
    assert mechanisms["ptshare"] == {"map_flag": 0x200000}
    flags = list(kernel_flags(mechanisms))
    assert "--msharefs-ioctl-abi" in flags and flags[flags.index("--msharefs-ioctl-abi") + 1] == "2024"
    assert "--ptshare-flag" in flags


def test_the_artifacts_system_map_names_its_own_functions(marker_kernel):
    system_map = marker_kernel.artifact.path / "System.map"
    symbols = SymbolMap.load(system_map)
    line = next(l for l in system_map.read_text().splitlines() if l.endswith(" mshare_lab_null_write"))
    address = int(line.split()[0], 16)
    assert symbols.function(address) == symbols.function(address + 3) == "mshare_lab_null_write"


def test_msharefs_ioctl_attaches_measures_and_is_not_sharing(runs):
    record = runs["ioctl"]
    assert record.outcome == "unsupported", record.reason
    assert record.reason.startswith("interface present but page tables not shared: "), record.reason
    result = record.result
    assert result["mechanism"] == "msharefs-ioctl" and result["clients_attached"] == 6
    assert result["sharing_verified"] is False
    # every client built its own page tables: close to the private cost
    assert 0.8 < result["pte_ratio"] < 1.5, result["pte_ratio"]


def test_the_owners_protection_change_is_proven_not_to_reach_the_clients(runs):
    result = runs["ioctl"].result
    assert result["protect_mode"] == "owner"
    # the owner's mprotect changes only its own page tables: every client's write went through
    assert result["protect_effective"] == {"asked": 6, "acked": 6, "held": 0}
    assert result["protect_change_us"] is None, "a change that held nowhere has no time"
    # back to read-write: writable everywhere, as it never stopped being
    assert result["protect_back_effective"] == {"asked": 6, "acked": 6, "held": 6}
    assert result["protect_back_us"] > 0


def test_ptshare_flag_is_accepted_and_measured_as_not_shared(runs):
    record = runs["ptshare"]
    assert record.outcome == "unsupported", record.reason
    assert "MAP_SHARED_PT accepted but page tables not shared" in record.reason
    assert record.kernel_log.clean and record.kernel_log.source == "dmesg"
    assert expectations.check({"kernel_log": "clean"}, record) == []


def test_kernel_log_counts_kinds_and_phases_of_the_triggered_reports(runs):
    log = runs["ioctl"].kernel_log
    assert log.source == "dmesg"
    assert log.counts == {"warning": 1, "bad-rss-counter": 2, "pgtables-bytes": 1}
    for kind in ("warning", "bad-rss-counter", "pgtables-bytes"):
        assert log.finding(kind).phase == "resources", log.finding(kind)
    warning = log.finding("warning")
    assert warning.first.startswith("WARNING: CPU: ") and "mshare_lab_fire" in warning.first
    assert "mshare-lab test warning at create" in warning.excerpt
    assert log.finding("bad-rss-counter").first.startswith("BUG: Bad rss-counter state mm:")
    assert log.finding("pgtables-bytes").first == "BUG: non-zero pgtables_bytes on freeing mm: 4096"
    assert log.crash_title is None, "nothing crashed"


def test_kernel_log_expectation_and_the_patched_kernel_default(runs):
    record = runs["ioctl"]
    # no kernel_log key: the default for patched kernels judged it
    assert len(record.expectation_failures) == 1, record.expectation_failures
    assert record.expectation_failures[0].startswith(
        "kernel_log: expected clean apart from rcu-stall, soft-lockup, hard-lockup, hung-task, "
        "measured 1 warning (first in resources), 2 bad-rss-counter (first in resources), "
        "1 pgtables-bytes (first in resources)")
    assert "the default for patched kernels" in record.expectation_failures[0]
    [failure] = expectations.check({"kernel_log": "clean"}, record)
    assert failure.startswith("kernel_log: expected clean, measured 1 warning")
    assert expectations.check({"kernel_log": ["warning", "bad-rss-counter", "pgtables-bytes"]}, record) == []
    assert expectations.check({"kernel_log": "any"}, record) == []


def test_an_oops_in_the_probe_is_a_guest_panic_named_after_it(runs):
    record = runs["crash"]
    assert record.outcome == "guest-panic", record.reason
    title = "BUG: kernel NULL pointer dereference in mshare_lab_null_write"
    assert record.kernel_log.crash_title == title
    assert record.reason.startswith(f"{title} (kernel panic: ")
    log = record.kernel_log
    assert log.source == "console"         # a panicked guest sends no dmesg
    assert log.counts["page-fault"] == 1 and log.counts["oops"] == 1 and log.counts["panic"] == 1
    assert log.finding("page-fault").phase == "probe"
    assert record.guest_seconds < 300


def test_micro_guest_sets_only_the_sysctls_its_kernel_has(runs):
    # this kernel has no hung-task or soft-lockup detector: the command line must not name
    # them (the kernel logs "Unknown kernel command line parameters" at notice level, so
    # below the console's level: the dmesg frame has it)
    assert "mshare-lab: phase init-run" in runs["ioctl"].dmesg_text, "the dmesg frame arrived"
    for name in ("ioctl", "ptshare"):
        assert "Unknown kernel command line parameters" not in runs[name].dmesg_text
        assert "hung_task_panic" not in runs[name].dmesg_text
        assert "hung_task_panic" not in runs[name].console_text


def test_the_2025_ioctl_numbering_drives_the_same_stand_in(marker_kernel, tmp_path):
    """The metadata says 2024 (the header defines SET_SIZE); the stand-in also takes the
    2025 CREATE_MAPPING number with ftruncate/fstat, so the workload's other ABI runs too."""
    from mshare_lab.guest.domain import DomainSpec
    from mshare_lab.image import micro
    from mshare_lab.options import workload_argv
    args = workload_argv(WorkloadSpec(mechanism="msharefs-ioctl", sga=16 << 20, clients=4, duration=0.5))
    args += ["--msharefs-ioctl-abi", "2025"]
    with LibvirtDriver() as driver:
        try:
            initrd = micro.scenario_initrd(micro.build(), micro.env_for(args, ["--msharefs-ioctl-abi", "2025"]),
                                           driver.scratch_dir() / "abi2025.cpio.gz")
            spec = DomainSpec(name=driver.new_name(), memory=512 << 20, vcpus=2,
                              kernel=marker_kernel.artifact.bzimage, initrd=initrd, cmdline=micro.MICRO_CMDLINE,
                              console_path=tmp_path / "console.log", serial_path=tmp_path / "serial.log")
            with driver.boot(spec) as guest:
                assert guest.wait(240), (tmp_path / "console.log").read_text(errors="replace")[-2000:]
        finally:
            driver.remove_scratch()
    result = micro.read_guest_output(tmp_path / "serial.log").result
    assert result["outcome"] == "completed", result.get("reason")
    assert result["clients_attached"] == 4 and result["sharing_verified"] is False
