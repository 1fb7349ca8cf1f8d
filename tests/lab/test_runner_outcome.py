"""Outcome classification: one outcome per run, from the evidence in the order of trust."""

from __future__ import annotations

from mshare_lab.lab.outcome import Evidence, classify, find_panic, oom_report

# kernel 6.1 wording, as the guest's dmesg frame and console carry it
OOM_DMESG = """\
[   20.101000] mshare-sga invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
[   20.102000] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/lab,task_memcg=/lab/c,task=mshare-sga,pid=201,uid=0
[   20.103000] Memory cgroup out of memory: Killed process 201 (mshare-sga) total-vm:70000kB, anon-rss:100kB, file-rss:0kB, shmem-rss:65536kB, UID:0 pgtables:180kB oom_score_adj:0
[   20.201000] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/lab,task_memcg=/lab/c,task=mshare-sga,pid=202,uid=0
[   20.202000] Memory cgroup out of memory: Killed process 202 (mshare-sga) total-vm:70000kB, anon-rss:100kB, file-rss:0kB, shmem-rss:65536kB, UID:0 pgtables:180kB oom_score_adj:0
[   21.000000] Out of memory: Killed process 77 (sh) total-vm:1000kB, anon-rss:10kB
"""
PANIC_CONSOLE = """\
[    3.000000] sysrq: Trigger a crash
[    3.000100] Kernel panic - not syncing: sysrq triggered crash
[    3.000200] CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-56-cloud-amd64 #1  Debian 6.1.192-2
[    3.000900] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---
"""


def ev(**kw) -> Evidence:
    values = dict(ended=True, end_reason="shutdown", timeout=60.0, console="", result=None, status=None)
    values.update(kw)
    return Evidence(**values)


def test_oom_victims_are_counted_once_per_pid_across_logs_and_line_kinds():
    report = oom_report(OOM_DMESG, OOM_DMESG)   # dmesg frame and console both carry the lines
    assert report.kills == 3
    assert report.victims == {201: "mshare-sga", 202: "mshare-sga", 77: "sh"}
    assert report.by_command() == {"mshare-sga": 2, "sh": 1}
    assert report.describe() == "the OOM killer killed 3 processes (mshare-sga x2, sh x1)"


def test_progress_lines_quoting_kernel_words_are_not_kernel_evidence():
    line = 'MSHARE-LAB-PROGRESS {"detail":"Kernel panic - not syncing: fake; Out of memory: Killed process 5 (x)"}'
    assert find_panic(line) is None
    assert oom_report(line).kills == 0


def test_completed_workload_is_completed():
    got = classify(ev(result={"outcome": "completed"}, status={"workload_exit": 0}))
    assert (got.outcome, got.reason, got.retry) == ("completed", None, False)


def test_panic_wins_over_everything_even_a_result():
    got = classify(ev(console=PANIC_CONSOLE, end_reason="destroyed", result={"outcome": "completed"}))
    assert got.outcome == "guest-panic"
    assert got.reason == "kernel panic: sysrq triggered crash"


def test_timeout_is_a_hang_with_the_console_tail_in_the_reason():
    console = "\n".join(f"line {i}" for i in range(100))
    got = classify(ev(ended=False, end_reason="destroyed", console=console, timeout=42))
    assert got.outcome == "guest-hang"
    assert "within 42 s" in got.reason
    assert got.reason.endswith("line 99") and "line 85" in got.reason and "line 84\n" not in got.reason


def test_workload_oom_and_kernel_oom_evidence_both_give_oom_with_victims():
    got = classify(ev(result={"outcome": "oom", "reason": "2 clients killed"}, dmesg=OOM_DMESG))
    assert got.outcome == "oom"
    assert got.reason == "2 clients killed; the OOM killer killed 3 processes (mshare-sga x2, sh x1)"
    assert got.oom.kills == 3
    # the init reported, but the coordinator died before writing its result
    got = classify(ev(status={"workload_exit": 137, "error": "mshare-sga run exited 137"}, dmesg=OOM_DMESG))
    assert got.outcome == "oom" and "3 processes" in got.reason


def test_unsupported_keeps_the_workloads_reason():
    got = classify(ev(result={"outcome": "unsupported", "reason": "msharefs not in /proc/filesystems"}))
    assert (got.outcome, got.reason) == ("unsupported", "msharefs not in /proc/filesystems")


def test_machinery_failures_are_infra_errors_and_retried_only_when_it_may_help():
    killed = classify(ev(end_reason="crashed", ended_by_infra=True))
    assert killed.outcome == "infra-error" and killed.retry and "crashed" in killed.reason
    silent = classify(ev(console="[    0.1] Linux version 6.1\n"))
    assert silent.outcome == "infra-error" and silent.retry and "without a report" in silent.reason
    told = classify(ev(status={"workload_exit": -1, "error": "asked for 512 huge pages, got 100"}))
    assert told.outcome == "infra-error" and not told.retry
    assert told.reason == "the guest reported no workload result: asked for 512 huge pages, got 100"
    workload_error = classify(ev(result={"outcome": "error", "reason": "bad --sga"}))
    assert workload_error.outcome == "infra-error" and "bad --sga" in workload_error.reason
