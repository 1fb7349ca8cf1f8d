"""The end-of-run table and totals line of mshare-lab run."""

from __future__ import annotations

from mshare_lab.lab.record import RunRecord
from mshare_lab.lab.scenario import Scenario
from mshare_lab.lab.summary import summary_table, totals
from mshare_lab.options import WorkloadSpec


def record(outcome, result=None, failures=(), wall=50.0, guest=45.0) -> RunRecord:
    return RunRecord(Scenario("debian-6.1", WorkloadSpec()), outcome, result=result,
                     expectation_failures=list(failures), started_at=100.0, finished_at=100.0 + wall,
                     guest_seconds=guest)


def test_table_rows_and_totals():
    done = record("completed", {"pte_ratio": 1.0345, "sharing_verified": False, "throughput_tps": 1234.6,
                                "protect_change_us": 12.34})
    hang = record("guest-hang", failures=["outcome: expected completed, measured guest-hang"], wall=70, guest=60)
    lines = summary_table([done, hang]).splitlines()
    assert lines[0].split() == ["scenario", "outcome", "pte_ratio", "sharing", "throughput", "protect", "kernel_log",
                                "expectations"]
    # human units: tx/s and the protection change as a duration
    assert lines[1].split() == ["debian-6.1/shmem/256M/x100/ram4G#1", "completed", "1.034", "no", "1,235", "tx/s",
                                "12.3", "µs", "-", "met"]
    assert lines[2].split()[:7] == ["debian-6.1/shmem/256M/x100/ram4G#1", "guest-hang", "-", "-", "-", "-", "-"]
    assert lines[2].endswith("FAILED: outcome: expected completed, measured guest-hang")
    unheld = record("unsupported", {"protect_change_us": None, "protect_effective": {"asked": 6, "acked": 6,
                                                                                   "held": 0}})
    assert summary_table([unheld]).splitlines()[1].split()[5:7] == ["held", "0/6"]
    many = record("completed", {"throughput_tps": 459217.2, "protect_change_us": 2255580.0})
    assert summary_table([many]).splitlines()[1].split()[4:8] == ["459,217", "tx/s", "2.26", "s"]
    assert totals([done, hang]) == ("2 scenario(s): 1 completed, 1 guest-hang; 1 with unmet expectations; "
                                    "guest time 105 s, mean overhead 7.5 s per scenario")
    assert totals([]) == "no scenario ran"


def test_the_live_done_line_says_what_the_kernel_complained_of():
    from mshare_lab.lab.kernel_log import scan
    from mshare_lab.lab.progress import LiveBoard
    lines: list[str] = []
    board = LiveBoard(2, lines.append)
    clean = record("completed")
    clean.kernel_log = scan("Linux version 6.12\n", "")
    dirty = record("completed", failures=["kernel_log: expected clean, measured 2 bad-rss-counter"])
    dirty.kernel_log = scan("mshare-lab: phase attach\n" + "BUG: Bad rss-counter state mm:0 type:MM_SHMEMPAGES val:-1\n" * 2,
                            "")
    board.done(0, clean.scenario_id, clean)
    board.done(1, dirty.scenario_id, dirty)
    assert lines[0].endswith(": completed, expectations met (wall 50.0s, guest 45.0s)")
    assert lines[1].endswith(": completed, 1 expectation(s) NOT met, kernel log: 2 bad-rss-counter (first in attach) "
                             "(wall 50.0s, guest 45.0s)")
    assert summary_table([dirty]).splitlines()[1].split()[6] == "2"   # "2 bad-rss-counter" in its column
