"""What a scenario is expected to do, and the check of a run against it.

A matrix entry says ``expect: {outcome: completed, pte_ratio_max: 1.3}``; ``check`` turns
each unmet expectation into one sentence with the expected and the measured value, so a
failing test or a report line needs no further explanation. The keys are declared here
(``KNOWN``) so that the matrix loader can reject a misspelt key before anything boots.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable

from ..units import format_size, parse_size
from .kernel_log import KINDS as KERNEL_LOG_KINDS
from .outcome import oom_report
from .record import RunRecord
from .scenario import OUTCOMES

#: numeric fields of the workload result document (dotted = nested), as workloads/sga
#: writes them (docs/design.md names the ones other areas rely on)
RESULT_METRICS: tuple[str, ...] = (
    "region_bytes", "mapped_bytes", "working_set_bytes", "mechanism_page_size", "wall_s",
    "clients_requested", "clients_started", "clients_attached", "clients_failed",
    "pagetables_delta_bytes", "pagetables_delta_raw_bytes", "region_pagetable_bytes",
    "region_pagetable_bytes_detach", "client_fixed_pte_bytes", "theory_pte_bytes",
    "private_pte_bytes_at_page_size", "pte_ratio", "pte_ratio_raw",
    "pagetables.before_bytes", "pagetables.after_bytes", "pagetables.peak_bytes",
    "pagetables.parked_bytes", "pagetables.detached_bytes",
    "vmpte_bytes.min", "vmpte_bytes.median", "vmpte_bytes.max", "vmpte_bytes.sum",
    "attach_populate_s", "transactions", "transactions_written", "throughput_tps",
    "latency_us.p50", "latency_us.p90", "latency_us.p99", "protect_change_us", "protect_acked",
    "protect_back_us", "protect_effective.asked", "protect_effective.acked", "protect_effective.held",
    "protect_back_effective.asked", "protect_back_effective.acked", "protect_back_effective.held",
    "oom_kills.clients_killed", "oom_kills.vmstat_oom_kill_delta", "oom_kills.cgroup_oom_kill",
    "oom_kills.group_kills", "oom_kills.first_seen_s",
)
#: numbers the run record itself carries (not the workload's)
RECORD_METRICS: tuple[str, ...] = ("guest_seconds", "wall_seconds", "overhead_seconds", "attempts")
METRICS: tuple[str, ...] = RESULT_METRICS + RECORD_METRICS

#: every expectation key a matrix may use
KNOWN: tuple[str, ...] = (
    "outcome", "sharing_verified", "oom_kills_min", "kernel_log", "protect_held",
    *(f"{m}_{bound}" for m in METRICS for bound in ("max", "min")),
)

# the runner's OOM reason: "the OOM killer killed 12 processes (mshare-sga x 12)"
_REASON_KILLS = re.compile(r"OOM killer killed (\d+) process")


def validate(key: str, value: Any) -> Any:
    """The normalised value of one expectation; ValueError naming the fix otherwise."""
    if key not in KNOWN:
        close = difflib.get_close_matches(key, KNOWN, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else \
            "; use outcome, sharing_verified, oom_kills_min or <metric>_max/_min"
        raise ValueError(f"unknown expectation '{key}'{hint}")
    if key == "outcome":
        return list(_outcomes(value))   # a list so the scenario round-trips through JSON
    if key in ("sharing_verified", "protect_held"):
        if not isinstance(value, bool):
            raise ValueError(f"'{value}' must be true or false")
        return value
    if key == "kernel_log":
        return _kernel_log_demand(value)
    metric = key.rsplit("_", 1)[0]
    if _is_bytes(metric) and isinstance(value, str):
        return parse_size(value)     # pagetables_delta_bytes_max: 64M reads naturally
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"'{value}' is not a number")
    return value


def _outcomes(value: Any) -> tuple[str, ...]:
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
        if item not in OUTCOMES:
            close = difflib.get_close_matches(str(item), OUTCOMES, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown outcome '{item}'; {hint}choose from {', '.join(OUTCOMES)}")
    return tuple(values)


#: ``kernel_log`` on a kernel built with patches when the entry does not say: clean apart
#: from the stall detectors, which fire on an emulated guest whose host is busy (vCPUs stall
#: for seconds under TCG) rather than on a kernel bug; a real hang is ``guest-hang``.
PATCHED_KERNEL_LOG_DEFAULT: tuple[str, ...] = ("rcu-stall", "soft-lockup", "hard-lockup", "hung-task")


def _kernel_log_demand(value: Any) -> Any:
    """``clean`` (no report of any kind), ``any`` (no demand) or the list of kinds a clean
    log may still hold (``[rcu-stall, hung-task]``)."""
    if value in ("clean", "any"):
        return value
    kinds = value if isinstance(value, (list, tuple)) else None
    if kinds is None or not all(isinstance(k, str) for k in kinds):
        raise ValueError(f"'{value}' must be clean, any, or a list of report kinds to tolerate")
    for kind in kinds:
        if kind not in KERNEL_LOG_KINDS:
            close = difflib.get_close_matches(kind, KERNEL_LOG_KINDS, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(f"unknown kernel-log kind '{kind}'; {hint}choose from {', '.join(KERNEL_LOG_KINDS)}")
    return list(kinds)


def patched(record: RunRecord) -> bool:
    """The run's kernel was built with a patch series (the kernel under development)."""
    return bool(record.kernel_metadata.get("patches"))


#: outcomes that fail a scenario unless its ``outcome`` expectation names them
UNEXPECTED_UNLESS_NAMED = ("guest-panic", "guest-hang")


def check(expect: dict[str, Any], record: RunRecord) -> list[str]:
    """Each unmet expectation as a sentence; an empty list means every one was met.

    Without an ``outcome`` key any outcome is accepted except a guest panic or hang:
    a crashed kernel is never silently a pass.
    """
    failures: list[str] = []
    if "outcome" not in expect and record.outcome in UNEXPECTED_UNLESS_NAMED:
        reason = f" ({record.reason})" if record.reason else ""
        failures.append(f"outcome: {record.outcome} was not expected{reason}; "
                        f"add 'outcome: {record.outcome}' to expect if it is")
    for key, wanted in expect.items():
        message = _check_one(key, wanted, record)
        if message:
            failures.append(message)
    if ("kernel_log" not in expect and patched(record) and record.kernel_log is not None
            and record.outcome not in UNEXPECTED_UNLESS_NAMED):
        # a patched kernel that corrupts its own accounting has failed, whatever it measured
        message = _check_kernel_log(list(PATCHED_KERNEL_LOG_DEFAULT), record)
        if message:
            failures.append(message + " (the default for patched kernels; "
                                      "'kernel_log: any' in expect turns it off)")
    return failures


def protect_held(record: RunRecord) -> tuple[bool | None, str]:
    """Whether both protection changes held in every client asked (None: no change ran),
    and the measured "held/asked" of each direction."""
    parts, held = [], True
    for name, label in (("protect_effective", "read-only"), ("protect_back_effective", "read-write")):
        value = record.metric(name)
        if not isinstance(value, dict):
            return None, "no protection change ran"
        parts.append(f"{label} held in {value.get('held')}/{value.get('asked')}")
        held = held and bool(value.get("asked")) and value.get("held") == value.get("asked")
    return held, ", ".join(parts)


def _check_protect_held(wanted: bool, record: RunRecord) -> str | None:
    held, measured = protect_held(record)
    if held is None:
        return f"protect_held: expected {_bool(wanted)}, but {measured}{_why(record)}"
    if held != wanted:
        return f"protect_held: expected {_bool(wanted)}, measured {measured}"
    return None


def _check_kernel_log(wanted: Any, record: RunRecord) -> str | None:
    if wanted == "any":
        return None
    allowed = () if wanted == "clean" else tuple(wanted)
    log = record.kernel_log
    if log is None:
        return f"kernel_log: expected clean, but the run kept no kernel log{_why(record)}"
    bad = [f for f in log.findings if f.kind not in allowed]
    if not bad:
        return None
    what = ", ".join(f"{f.count} {f.kind}" + (f" (first in {f.phase})" if f.phase else "") for f in bad)
    tolerated = f" apart from {', '.join(allowed)}" if allowed else ""
    return f"kernel_log: expected clean{tolerated}, measured {what}; first: {bad[0].first}"


def _check_one(key: str, wanted: Any, record: RunRecord) -> str | None:
    if key == "outcome":
        allowed = _outcomes(wanted)
        if record.outcome in allowed:
            return None
        reason = f" ({record.reason})" if record.reason else ""
        return f"outcome: expected {' or '.join(allowed)}, measured {record.outcome}{reason}"
    if key == "sharing_verified":
        measured = record.metric("sharing_verified")
        if measured is None:
            return f"sharing_verified: expected {_bool(wanted)}, but the run left no result{_why(record)}"
        if bool(measured) != wanted:
            return f"sharing_verified: expected {_bool(wanted)}, measured {_bool(measured)}"
        return None
    if key == "kernel_log":
        return _check_kernel_log(wanted, record)
    if key == "protect_held":
        return _check_protect_held(wanted, record)
    if key == "oom_kills_min":
        measured = oom_kills(record)
        if measured >= wanted:
            return None
        return f"oom_kills: expected at least {wanted}, measured {measured}{_why(record)}"
    metric, bound = key.rsplit("_", 1)
    return _check_bound(metric, bound, wanted, record)


def _check_bound(metric: str, bound: str, wanted: float, record: RunRecord) -> str | None:
    measured = metric_value(record, metric)
    show = _formatter(metric)
    words = "at most" if bound == "max" else "at least"
    if measured is None:
        return f"{metric}: expected {words} {show(wanted)}, but the run has no {metric}{_why(record)}"
    ok = measured <= wanted if bound == "max" else measured >= wanted
    if ok:
        return None
    return f"{metric}: expected {words} {show(wanted)}, measured {show(measured)}"


def metric_value(record: RunRecord, name: str) -> float | None:
    """A numeric metric of the run (workload result or run record), None when absent."""
    if name in RECORD_METRICS:
        return float(getattr(record, name))
    value = record.metric(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def oom_kills(record: RunRecord) -> int:
    """How many processes the OOM killer took in the run.

    The workload counts its killed clients and the vmstat oom_kill delta. When the guest
    died before writing a result, the kernel log is the evidence: the runner's reason
    ("the OOM killer killed 12 processes ..."), a ``dmesg`` text in the result, and the
    kept console log, parsed by the runner's own ``outcome.oom_report``. An ``oom``
    outcome is at least one kill: the runner only says oom on kernel evidence.
    """
    counts = [record.metric("oom_kills.clients_killed"), record.metric("oom_kills.vmstat_oom_kill_delta")]
    found = [int(c) for c in counts if isinstance(c, (int, float)) and not isinstance(c, bool)]
    if isinstance(record.reason, str):
        found += [int(n) for n in _REASON_KILLS.findall(record.reason)]
    logs = [record.metric("dmesg"), record.reason, _console_text(record.console_log)]
    found.append(oom_report(*(log for log in logs if isinstance(log, str))).kills)
    best = max(found, default=0)
    return max(best, 1) if record.outcome == "oom" else best


def _console_text(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None      # a moved or cleaned run directory: the other evidence still counts


def _is_bytes(metric: str) -> bool:
    return "_bytes" in metric       # region_pagetable_bytes, vmpte_bytes.max, ...


def _formatter(metric: str) -> Callable[[float], str]:
    if _is_bytes(metric):
        return lambda v: f"{format_size(v)} ({int(v)} B)"
    return lambda v: f"{v:g}"


def _bool(value: Any) -> str:
    return "true" if value else "false"


def _why(record: RunRecord) -> str:
    if record.outcome == "completed" and not record.reason:
        return ""
    return f" (outcome {record.outcome}: {record.reason})" if record.reason else f" (outcome {record.outcome})"
