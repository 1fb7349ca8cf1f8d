"""The table ``mshare-lab run`` prints at the end: one row per scenario, what matters most."""

from __future__ import annotations

from typing import Any, Iterable

from ..units import format_metric
from .record import RunRecord

COLUMNS = ("scenario", "outcome", "pte_ratio", "sharing", "throughput", "protect", "kernel_log", "expectations")


def _cell(value: Any, fmt: str = "{}") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return fmt.format(value)


def row(record: RunRecord) -> tuple[str, ...]:
    failures = record.expectation_failures
    return (
        record.scenario_id,
        record.outcome,
        _cell(record.metric("pte_ratio"), "{:.3f}"),
        _cell(record.metric("sharing_verified")),
        format_metric("throughput_tps", record.metric("throughput_tps")),
        protect_cell(record),
        kernel_log_cell(record),
        "met" if not failures else f"FAILED: {'; '.join(failures)}",
    )


def protect_cell(record: RunRecord) -> str:
    """The time to the last client that proved the read-only change; a change that did not
    hold in every client shows as ``held 0/6``, never as a fast change."""
    effective = record.metric("protect_effective")
    if isinstance(effective, dict) and effective.get("held") != effective.get("asked"):
        return f"held {effective.get('held')}/{effective.get('asked')}"
    return format_metric("protect_change_us", record.metric("protect_change_us"))


def kernel_log_cell(record: RunRecord) -> str:
    """``clean``, or the kinds the kernel complained of (``170 bad-rss-counter,1 warning``)."""
    log = record.kernel_log
    if log is None or log.source == "none":
        return "-"
    if log.clean:
        return "clean"
    return ",".join(f"{f.count} {f.kind}" for f in log.findings)


def summary_table(records: Iterable[RunRecord]) -> str:
    rows = [COLUMNS] + [row(r) for r in records]
    # the last column (the expectation sentences) is left unpadded: it can be long
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for cells in rows:
        padded = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        lines.append("  ".join(padded + [cells[-1]]))
    return "\n".join(lines)


def totals(records: list[RunRecord]) -> str:
    if not records:
        return "no scenario ran"
    outcomes: dict[str, int] = {}
    for record in records:
        outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
    failed = sum(1 for r in records if r.expectation_failures)
    overhead = sum(r.overhead_seconds for r in records) / len(records)
    guest = sum(r.guest_seconds for r in records)
    return (f"{len(records)} scenario(s): " + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
            + f"; {failed} with unmet expectations; guest time {guest:.0f} s, "
              f"mean overhead {overhead:.1f} s per scenario" + hosts_line(records))


def hosts_line(records: list[RunRecord]) -> str:
    """Which hosts ran the scenarios (when more than one) and which failed, when, what moved."""
    import time
    ran: dict[str, int] = {}
    for record in records:
        name = (record.host or {}).get("name")
        if name:
            ran[name] = ran.get(name, 0) + 1
    text = ""
    if len(ran) > 1:
        text += "; hosts " + ", ".join(f"{name} ran {n}" for name, n in sorted(ran.items()))
    failed: dict[str, list[float]] = {}
    for record in records:
        for failure in record.host_failures:
            failed.setdefault(str(failure.get("host")), []).append(float(failure.get("at") or 0))
    for name, times in sorted(failed.items()):
        when = time.strftime("%H:%M:%S", time.localtime(min(times)))
        text += f"; host {name} FAILED at {when} ({len(times)} scenario(s) moved to other hosts)"
    return text
