"""Expectations against run records: each failure says what was expected and measured."""

from __future__ import annotations

import pytest

from mshare_lab.lab.expectations import KNOWN, check, oom_kills, validate


def test_met_expectations_give_no_failures(record_factory):
    record = record_factory(pte_ratio=1.05, clients_attached=100, sharing_verified=False,
                            latency_us={"p99": 80})
    assert check({"outcome": ["completed"], "pte_ratio_min": 0.9, "pte_ratio_max": 1.3,
                  "clients_attached_min": 100, "latency_us.p99_max": 100, "sharing_verified": False}, record) == []


def test_each_failure_is_a_sentence_with_expected_and_measured(record_factory):
    record = record_factory(pte_ratio=1.5, clients_attached=80, sharing_verified=False,
                            pagetables_delta_bytes=80 << 20)
    failures = check({"outcome": "completed", "pte_ratio_max": 1.3, "clients_attached_min": 100,
                      "sharing_verified": True, "pagetables_delta_bytes_max": 64 << 20}, record)
    assert failures == [
        "pte_ratio: expected at most 1.3, measured 1.5",
        "clients_attached: expected at least 100, measured 80",
        "sharing_verified: expected true, measured false",
        "pagetables_delta_bytes: expected at most 64.0 MiB (67108864 B), measured 80.0 MiB (83886080 B)",
    ]


def test_outcome_and_missing_metrics_carry_the_reason(record_factory):
    record = record_factory(outcome="guest-panic", reason="Kernel panic - not syncing: Out of memory")
    failures = check({"outcome": ["completed"], "pte_ratio_max": 1.3}, record)
    assert failures == [
        "outcome: expected completed, measured guest-panic (Kernel panic - not syncing: Out of memory)",
        "pte_ratio: expected at most 1.3, but the run has no pte_ratio "
        "(outcome guest-panic: Kernel panic - not syncing: Out of memory)"]


def test_a_crash_fails_even_without_an_outcome_expectation(record_factory):
    assert check({}, record_factory(outcome="guest-hang", reason="no output for 300 s"))[0].startswith(
        "outcome: guest-hang was not expected")
    assert check({"outcome": "guest-hang"}, record_factory(outcome="guest-hang")) == []
    assert check({}, record_factory(outcome="oom")) == []


def test_oom_kills_from_result_kernel_log_or_outcome(record_factory):
    assert oom_kills(record_factory(oom_kills={"clients_killed": 7, "vmstat_oom_kill_delta": 9})) == 9
    log = ("[ 12.1] Out of memory: Killed process 311 (mshare-sga)\n"
           "[ 12.9] Out of memory: Killed process 312 (mshare-sga)\n")
    assert oom_kills(record_factory(outcome="oom", reason="oom", dmesg=log)) == 2
    assert oom_kills(record_factory(outcome="oom", reason="guest OOM")) == 1
    assert oom_kills(record_factory(outcome="oom",
                                    reason="the OOM killer killed 12 processes (mshare-sga x 12)")) == 12
    assert oom_kills(record_factory(pte_ratio=1.0)) == 0
    assert check({"oom_kills_min": 1}, record_factory(pte_ratio=1.0)) == [
        "oom_kills: expected at least 1, measured 0"]


def test_oom_kills_from_the_kept_console_log(record_factory, tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[ 30.2] oom-kill:constraint=CONSTRAINT_NONE,task=mshare-sga,pid=401,uid=0\n"
                       "[ 30.2] Out of memory: Killed process 401 (mshare-sga) total-vm:4kB\n"
                       "[ 31.0] Out of memory: Killed process 402 (mshare-sga) total-vm:4kB\n")
    record = record_factory(outcome="guest-hang", reason="no report")
    record.console_log = str(console)
    assert oom_kills(record) == 2                     # pid 401 reported twice, counted once
    record.console_log = str(tmp_path / "gone.log")
    assert oom_kills(record) == 0


def test_record_metrics_and_validation(record_factory):
    record = record_factory(pte_ratio=1.0)      # guest_seconds=25, wall 30, overhead 5
    assert check({"overhead_seconds_max": 4}, record) == ["overhead_seconds: expected at most 4, measured 5"]
    assert "latency_us.p99_max" in KNOWN and "guest_seconds_max" in KNOWN
    assert validate("pagetables_delta_bytes_max", "64M") == 64 << 20
    assert validate("outcome", "oom") == ["oom"]
    with pytest.raises(ValueError, match="did you mean 'oom_kills_min'"):
        validate("oom_kill_min", 1)
    with pytest.raises(ValueError, match="not a number"):
        validate("pte_ratio_max", True)
