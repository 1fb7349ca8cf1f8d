"""The kernel-log scanner on the shapes real kernels print (no guest needed).

The lines below are the formats of 6.x kernels (mm/debug, arch/x86/mm/fault.c, the
watchdogs, lockdep); tests/kernel/test_kernel_standin.py checks the same scanner on a
real kernel's output.
"""

from __future__ import annotations

import pytest

from mshare_lab.lab import expectations, kernel_log
from mshare_lab.lab.kernel_log import KernelLog, SymbolMap, scan
from mshare_lab.lab.outcome import Evidence, classify
from mshare_lab.lab.record import RunRecord
from mshare_lab.lab.scenario import Scenario
from mshare_lab.options import WorkloadSpec

PHASES = ("MSHARE-LAB-PROGRESS {\"phase\":\"boot\",\"step\":\"mounted\",\"detail\":\"6.12\",\"uptime_s\":1.0}\n"
          "MSHARE-LAB-PROGRESS {\"phase\":\"probe\",\"clients\":0}\n")
PAGETABLE_CRASH = (PHASES +
                   "mshare-sga: Corrupted page table at address 4000000000\n"
                   "PGD 800000000ab2b067 P4D 800000000ab2b067 PUD 9fe9067 PMD 4000000000000e7\n"
                   "Bad pagetable: 000e [#1] SMP\n"
                   "CPU: 1 UID: 0 PID: 71 Comm: mshare-sga Not tainted 6.12.117 #1\n"
                   "RIP: 0033:0x401a2b\n"
                   "Kernel panic - not syncing: Fatal exception\n")


@pytest.mark.parametrize("line, kind", [
    ("BUG: Bad rss-counter state mm:00000000c0ffee00 type:MM_SHMEMPAGES val:-5020", "bad-rss-counter"),
    ("BUG: non-zero pgtables_bytes on freeing mm: 4096", "pgtables-bytes"),
    ("BUG: Bad page state in process mshare-sga  pfn:0a3c1", "bad-page"),
    ("Bad pagetable: 000e [#1] SMP", "bad-pagetable"),
    ("BUG: KASAN: slab-use-after-free in mshare_fault+0x1c/0x90", "kasan"),
    ("BUG: KFENCE: out-of-bounds read in foo+0x1/0x2", "kfence"),
    ("UBSAN: shift-out-of-bounds in mm/memory.c:123:4", "ubsan"),
    ("WARNING: possible circular locking dependency detected", "lockdep"),
    ("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu-stall"),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [mshare-sga:99]", "soft-lockup"),
    ("INFO: task mshare-sga:99 blocked for more than 120 seconds.", "hung-task"),
    ("Oops: general protection fault, probably for non-canonical address 0xdead000000000100: 0000 [#1] SMP",
     "general-protection-fault"),
    ("BUG: kernel NULL pointer dereference, address: 0000000000000008", "page-fault"),
    ("Oops: Oops: 0002 [#1] SMP", "oops"),
    ("kernel BUG at mm/memory.c:1234!", "bug"),
    ("WARNING: CPU: 0 PID: 1 at mm/mmap.c:10 vma_link+0x1/0x2", "warning"),
    ("Kernel panic - not syncing: Fatal exception", "panic"),
    ("[   12.345678] BUG: Bad rss-counter state mm:0 type:MM_ANONPAGES val:1", "bad-rss-counter"),
])
def test_each_kind_is_recognised(line, kind):
    assert kernel_log.classify_line(line)[0] == kind


def test_ordinary_lines_and_progress_lines_quoting_reports_are_not_reports():
    for line in ("Linux version 6.12.117", "Out of memory: Killed process 71 (mshare-sga)",
                 'MSHARE-LAB-PROGRESS {"detail":"BUG: Bad rss-counter state"}',
                 "mshare-lab: phase attach"):
        assert kernel_log.classify_line(line) is None, line


def test_counts_first_excerpt_and_phase_from_the_kernel_logs_phase_lines():
    dmesg = ("Linux version 6.12.117\n"
             "mshare-lab: phase init-mounted\n"
             "mshare-lab: phase resources\n"
             "------------[ cut here ]------------\n"
             "mshare: refcount went negative\n"
             "WARNING: CPU: 0 PID: 70 at mm/x.c:63 mshare_fault+0x12/0x40\n"
             "Modules linked in:\n"
             "mshare-lab: phase attach\n"
             + "BUG: Bad rss-counter state mm:0 type:MM_SHMEMPAGES val:-1\n" * 170
             + "mshare-lab: phase done\n"
             "BUG: non-zero pgtables_bytes on freeing mm: 4096\n")
    log = scan(dmesg, "")
    assert log.source == "dmesg" and not log.clean
    assert log.counts == {"warning": 1, "bad-rss-counter": 170, "pgtables-bytes": 1}, "the cut-here line is no report"
    assert [f.phase for f in log.findings] == ["resources", "attach", "done"]
    warning = log.finding("warning")
    assert warning.first == "WARNING: CPU: 0 PID: 70 at mm/x.c:63 mshare_fault+0x12/0x40"
    # the WARN's own message (between "cut here" and WARNING) leads the excerpt
    assert warning.excerpt.splitlines()[:3] == ["mshare: refcount went negative", warning.first, "Modules linked in:"]
    assert len(log.finding("bad-rss-counter").excerpt.splitlines()) == kernel_log.EXCERPT_LINES
    assert log.describe() == ("kernel log: 1 warning (first in resources), 170 bad-rss-counter (first in attach), "
                              "1 pgtables-bytes (first in done)")
    assert KernelLog.from_dict(log.to_dict()) == log


def test_a_dmesg_without_phase_lines_borrows_the_phase_from_the_console():
    dmesg = "BUG: non-zero pgtables_bytes on freeing mm: 4096\nWARNING: CPU: 0 PID: 1 at a.c:1 f+0x1/0x2\n"
    console = PHASES + "BUG: non-zero pgtables_bytes on freeing mm: 4096\n"
    log = scan(dmesg, console)
    assert log.finding("pgtables-bytes").phase == "probe"
    assert log.finding("warning").phase is None, "below the console log level: phase unknown"


def test_clean_log_and_no_log():
    assert scan("Linux version 6.12\nmshare-lab: phase done\n", "").describe() == "kernel log: clean (2 lines)"
    assert scan(None, "").describe() == "kernel log: not available"


@pytest.mark.parametrize("report, title", [
    ("BUG: kernel NULL pointer dereference, address: 0000000000000000\nOops: 0002 [#1] SMP\n"
     "RIP: 0010:mshare_lab_null_write+0x9/0x10\n", "BUG: kernel NULL pointer dereference in mshare_lab_null_write"),
    ("Oops: general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP\n"
     "RIP: 0010:unlink_anon_vmas+0x5e/0x1a0\n", "general protection fault in unlink_anon_vmas"),
    ("kernel BUG at mm/rmap.c:1234!\nOops: invalid opcode: 0000 [#1]\nRIP: 0010:page_remove_rmap+0x1/0x2\n",
     "kernel BUG in page_remove_rmap"),
    ("------------[ cut here ]------------\nWARNING: CPU: 1 PID: 7 at mm/mmap.c:99 exit_mmap+0x2a/0x300\n",
     "WARNING in exit_mmap"),
    ("BUG: KASAN: slab-use-after-free in mshare_fault+0x1c/0x90\n", "KASAN: slab-use-after-free in mshare_fault"),
    ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [mshare-sga:9]\nRIP: 0010:zap_pte_range+0x1/0x2\n",
     "BUG: soft lockup in zap_pte_range"),
])
def test_crash_titles_the_way_syzbot_names_them(report, title):
    console = report + "Kernel panic - not syncing: Fatal exception\n"
    assert scan(None, console, crashed=True).crash_title == title


def test_the_crash_is_named_after_the_fatal_report_not_an_earlier_accounting_line():
    console = "BUG: Bad rss-counter state mm:0 type:MM_SHMEMPAGES val:-1\n" + PAGETABLE_CRASH
    log = scan(None, console, crashed=True)
    # RIP 0033 is user space: no kernel function to name
    assert log.crash_title == "Corrupted page table"
    assert log.finding("bad-pagetable").count == 2 and log.finding("bad-pagetable").phase == "probe"


def test_an_unsymbolised_rip_is_resolved_with_system_map(tmp_path):
    system_map = tmp_path / "System.map"
    system_map.write_text("ffffffff81000000 T _stext\nffffffff81001000 T do_anonymous_page\n"
                          "ffffffff81001400 t handle_pte_fault\nffffffff81002000 D some_data\n"
                          "ffffffff81003000 T _etext\n")
    console = ("BUG: unable to handle page fault for address: ffff888000000000\n"
               "RIP: 0010:0xffffffff81001456\nKernel panic - not syncing: Fatal exception\n")
    assert scan(None, console, crashed=True, system_map=system_map).crash_title == \
        "BUG: unable to handle page fault in handle_pte_fault"
    # an address outside the kernel text names no function
    symbols = SymbolMap.load(system_map)
    assert symbols.function(0xffffffff81003100) is None and symbols.function(0x401000) is None
    assert scan(None, console, crashed=True).crash_title == "BUG: unable to handle page fault"


def test_guest_panic_reason_uses_the_title_and_every_classification_carries_the_log():
    got = classify(Evidence(ended=True, end_reason="destroyed", console=PAGETABLE_CRASH))
    assert got.outcome == "guest-panic"
    assert got.reason == "Corrupted page table (kernel panic: Fatal exception)"
    assert got.kernel_log.crash_title == "Corrupted page table"
    done = classify(Evidence(ended=True, result={"outcome": "completed"}, dmesg="Linux\n"))
    assert done.outcome == "completed" and done.kernel_log.clean and done.kernel_log.source == "dmesg"


def _record(log: KernelLog | None, patches: bool, outcome: str = "completed") -> RunRecord:
    meta = {"patches": [{"path": "series.mbox", "units": 3}]} if patches else {}
    return RunRecord(Scenario("my-mshare", WorkloadSpec()), outcome, kernel_metadata=meta, kernel_log=log)


def test_kernel_log_expectation_values_and_the_patched_default():
    dirty = scan("BUG: Bad rss-counter state mm:0 type:MM_SHMEMPAGES val:-1\n"
                 "rcu: INFO: rcu_sched self-detected stall on CPU\n", "")
    stalls_only = scan("rcu: INFO: rcu_sched self-detected stall on CPU\n", "")
    assert expectations.validate("kernel_log", "clean") == "clean"
    assert expectations.validate("kernel_log", ["rcu-stall"]) == ["rcu-stall"]
    with pytest.raises(ValueError, match="did you mean 'rcu-stall'"):
        expectations.validate("kernel_log", ["rcu-stal"])
    with pytest.raises(ValueError, match="clean, any, or a list"):
        expectations.validate("kernel_log", "spotless")
    # a patched kernel is judged by default; stall detectors are tolerated there
    [failure] = expectations.check({}, _record(dirty, patches=True))
    assert failure.startswith("kernel_log: expected clean apart from rcu-stall, soft-lockup, hard-lockup, "
                              "hung-task, measured 1 bad-rss-counter; first: BUG: Bad rss-counter state")
    assert expectations.check({}, _record(stalls_only, patches=True)) == []
    assert expectations.check({}, _record(dirty, patches=False)) == [], "stock kernels: only on demand"
    assert expectations.check({"kernel_log": "any"}, _record(dirty, patches=True)) == []
    [demanded] = expectations.check({"kernel_log": "clean"}, _record(stalls_only, patches=False))
    assert demanded.startswith("kernel_log: expected clean, measured 1 rcu-stall")
    [missing] = expectations.check({"kernel_log": "clean"}, _record(None, patches=False))
    assert "kept no kernel log" in missing
