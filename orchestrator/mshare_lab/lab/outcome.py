"""Classify what a guest run left behind into exactly one outcome.

The evidence: whether the domain ended by itself or hit the timeout, why libvirt says it
stopped, the console (ttyS0: kernel messages, progress lines) and the frames the guest
sent on ttyS1 (workload result, probe, dmesg, status). The order of the checks is the
order of trust:

1. a kernel panic on the console is ``guest-panic`` whatever else happened (a panicking
   kernel's half-written result is not a measurement);
2. a domain that did not end within the timeout is ``guest-hang``;
3. a domain that QEMU or libvirt ended (not the guest) is ``infra-error``, retried;
4. the workload's own outcome (``completed``, ``oom``, ``unsupported``); its ``error``
   is the lab's problem (``infra-error``), never a kernel result;
5. OOM-killer reports in the kernel log make the run ``oom`` even when the workload could
   not say so itself (the killer took the coordinator, or the init never got to report);
6. a patched mechanism that completed without its page tables being shared is
   ``unsupported`` ("interface present but page tables not shared"): a stock kernel or a
   stand-in that accepts the interface is not page-table sharing;
7. a guest that ended without any report is ``infra-error`` with the console tail.

Every classification carries the kernel-log summary (``lab.kernel_log``); a panic is
named after the crash report that caused it (syzbot style), not after the panic line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import mechanisms
from . import kernel_log
from .kernel_log import KernelLog

#: "Kernel panic - not syncing: ..." (x86 prints it once, then "---[ end Kernel panic")
_PANIC = re.compile(r"Kernel panic - not syncing:?\s*(.*)")
#: the kernel's one line per OOM kill (global and memory-cgroup OOM, 4.x to 6.x wording)
_KILLED = re.compile(r"(?:Out of memory|Memory cgroup out of memory): Kill(?:ed)? process (\d+) \(([^)]*)\)")
#: the 5.x+ summary line ("oom-kill:constraint=...,task=NAME,pid=PID,uid=0")
_OOM_KILL = re.compile(r"oom-kill:.*?task=([^,\s]*),pid=(\d+)")
#: MSHARE-LAB-PROGRESS lines are not kernel messages and may quote any text
_PROGRESS = "MSHARE-LAB-PROGRESS"

TAIL_LINES = 15


@dataclass(frozen=True)
class OomReport:
    """Who the OOM killer took, from the guest kernel log."""

    victims: dict[int, str] = field(default_factory=dict)   # pid -> command name

    @property
    def kills(self) -> int:
        return len(self.victims)

    def by_command(self) -> dict[str, int]:
        return dict(Counter(self.victims.values()).most_common())

    def describe(self) -> str:
        names = ", ".join(f"{comm} x{n}" for comm, n in self.by_command().items())
        return f"the OOM killer killed {self.kills} process{'es' if self.kills != 1 else ''} ({names})"


@dataclass(frozen=True)
class Evidence:
    """Everything the classification looks at (all plain data, so it is testable alone)."""

    ended: bool                                  # the domain stopped before the timeout
    end_reason: str | None = None                # libvirt's shut-off reason ("shutdown", "failed"...)
    ended_by_infra: bool = False                 # QEMU/libvirt, not the guest, ended it
    timeout: float = 0.0
    console: str = ""                            # whole ttyS0 text
    result: dict[str, Any] | None = None         # the workload's result document
    status: dict[str, Any] | None = None         # the init's status frame
    dmesg: str | None = None                     # the dmesg frame
    broken_frames: tuple[str, ...] = ()          # "name: why" of frames that failed their checksum
    system_map: Path | None = None               # the kernel's System.map, to name a crash's function


@dataclass(frozen=True)
class Classification:
    outcome: str
    reason: str | None = None
    retry: bool = False                          # an infra error worth a second attempt
    oom: OomReport = OomReport()
    kernel_log: KernelLog | None = None


def find_panic(console: str) -> str | None:
    """The panic message, or None."""
    for line in console.splitlines():
        if _PROGRESS in line:
            continue
        match = _PANIC.search(line)
        if match:
            return match.group(1).strip() or "kernel panic"
    return None


def oom_report(*logs: str | None) -> OomReport:
    """OOM kills found in any of the kernel logs, each victim counted once (by pid)."""
    victims: dict[int, str] = {}
    for text in logs:
        if not text:
            continue
        for line in text.splitlines():
            if _PROGRESS in line:
                continue
            for match in _KILLED.finditer(line):
                victims.setdefault(int(match.group(1)), match.group(2))
            for match in _OOM_KILL.finditer(line):
                victims.setdefault(int(match.group(2)), match.group(1))
    return OomReport(victims)


def console_tail(console: str, lines: int = TAIL_LINES) -> str:
    kept = [line for line in console.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def classify(ev: Evidence) -> Classification:
    panic = find_panic(ev.console)
    log = kernel_log.scan(ev.dmesg, ev.console, system_map=ev.system_map,
                          crashed=panic is not None or not ev.ended)
    return replace(_classify(ev, panic, log), kernel_log=log)


def _classify(ev: Evidence, panic: str | None, log: KernelLog) -> Classification:
    oom = oom_report(ev.dmesg, ev.console)
    if panic is not None:
        extra = f"; before it, {oom.describe()}" if oom.kills else ""
        named = f"{log.crash_title} (kernel panic: {panic})" if log.crash_title else f"kernel panic: {panic}"
        return Classification("guest-panic", f"{named}{extra}", oom=oom)
    if not ev.ended:
        tail = console_tail(ev.console) or "(nothing on the console)"
        after = f" after {log.crash_title}" if log.crash_title else ""
        return Classification("guest-hang", f"the guest did not finish within {ev.timeout:g} s{after}; "
                                            f"console tail:\n{tail}", oom=oom)
    if ev.ended_by_infra:
        return Classification("infra-error", f"the domain was ended by the host side ({ev.end_reason}), "
                                             f"not by the guest; console tail:\n{console_tail(ev.console, 5)}",
                              retry=True, oom=oom)
    workload = (ev.result or {}).get("outcome")
    if workload == "error":
        return Classification("infra-error", f"the workload failed: {(ev.result or {}).get('reason')}", oom=oom)
    if workload == "oom" or (oom.kills and workload in (None, "completed")):
        parts = [p for p in ((ev.result or {}).get("reason"), oom.describe() if oom.kills else None) if p]
        return Classification("oom", "; ".join(parts) or "the workload reported an OOM", oom=oom)
    if workload == "unsupported":
        return Classification("unsupported", (ev.result or {}).get("reason") or "the mechanism is not supported",
                              oom=oom)
    if workload == "completed":
        unshared = not_shared(ev.result or {})
        if unshared:
            return Classification("unsupported", unshared, oom=oom)
        return Classification("completed", None, oom=oom)
    return Classification("infra-error", _no_report_reason(ev), retry=_worth_retry(ev), oom=oom)


def not_shared(result: dict[str, Any]) -> str | None:
    """Why a completed run of a patched mechanism is no sharing at all (None: it shared,
    or the mechanism is a stock one, or the measurement could not decide)."""
    name = result.get("mechanism")
    if name not in mechanisms.MECHANISMS or not mechanisms.get(name).needs_patched_kernel:
        return None
    if result.get("sharing_verified") is not False:
        return None
    ratio = result.get("pte_ratio")
    region = result.get("region_pagetable_bytes")
    measured = (f": the region's page tables measured {region / 1024:.0f} KiB for "
                f"{result.get('clients_attached')} clients, pte_ratio {ratio:.3f} of private page tables"
                if isinstance(ratio, (int, float)) and isinstance(region, (int, float)) else "")
    return f"interface present but page tables not shared{measured}"


def _no_report_reason(ev: Evidence) -> str:
    if ev.result is not None:
        return f"the workload result has an unknown outcome {ev.result.get('outcome')!r}"
    if ev.status is not None:
        error = ev.status.get("error") or f"workload exit {ev.status.get('workload_exit')}"
        return f"the guest reported no workload result: {error}"
    broken = f" (broken frames: {', '.join(ev.broken_frames)})" if ev.broken_frames else ""
    return (f"the guest ended ({ev.end_reason}) without a report{broken}; console tail:\n"
            f"{console_tail(ev.console, 8) or '(nothing on the console)'}")


def _worth_retry(ev: Evidence) -> bool:
    # a guest whose init said why it could not run (bad scenario env, missing huge pages)
    # will say it again; a cut or silent stream may be the machinery
    return ev.status is None and ev.result is None
