"""Read a guest's kernel log the way a kernel engineer does: what went wrong, how often, when.

A page-table sharing patch can measure perfectly and still corrupt the kernel's own
accounting ("BUG: Bad rss-counter state"), warn, or oops in one client. ``scan`` applies
the table ``PATTERNS`` to every kernel-log line of a run and returns a ``KernelLog``:
per kind, how many lines, the first one with the lines after it, and the phase of the
run it appeared in. ``crash_title`` names a crash the way syzbot and KernelCI do: the
first report line without its variable parts, plus the function the RIP was in
(``BUG: kernel NULL pointer dereference in mshare_lab_null_write``).

Where the lines come from: the full kernel log when the guest sent one (the micro
guest's dmesg frame, the log a full guest's playbook collected); the console otherwise
(a guest that panicked sends no dmesg). The phase: the micro init and mshare-sga write
each new phase into the kernel log itself (``mshare-lab: phase attach``, info level), so
a report in dmesg belongs to the last phase line before it. On the console the kernel's
messages are interleaved with the guest's ``MSHARE-LAB-PROGRESS`` lines, which say the
same. A dmesg without phase lines (an older image) borrows the phase of the same line
on the console; a line that never reached the console has no known phase.

The guest runs the kernel under test: its log is untrusted text. Nothing here evaluates
it; lines and excerpts are cut to fixed sizes.
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .. import frames

#: one kind per line: the first pattern that matches wins, so specific kinds come first
PATTERNS: tuple[tuple[str, str], ...] = (
    ("bad-rss-counter", r"BUG: Bad rss-counter state"),
    ("pgtables-bytes", r"BUG: non-zero pgtables_bytes"),
    ("bad-page", r"BUG: Bad page (?:state|map)"),
    ("bad-pagetable", r"Bad pagetable:|Corrupted page table at address"),
    ("kasan", r"BUG: KASAN: |KASAN: \S+ in "),
    ("kfence", r"BUG: KFENCE: "),
    ("ubsan", r"UBSAN: "),
    ("lockdep", r"WARNING: (?:possible circular locking|possible recursive locking|inconsistent lock state"
                r"|suspicious RCU usage|bad unlock balance|held lock freed|lock held when returning)"
                r"|possible irq lock inversion dependency|BUG: sleeping function called from invalid context"
                r"|BUG: scheduling while atomic|INFO: trying to register non-static key"),
    ("rcu-stall", r"rcu: INFO: rcu_\w+ (?:self-)?detected stalls?|INFO: rcu_\w+ (?:self-)?detected stalls?"),
    ("soft-lockup", r"BUG: soft lockup"),
    ("hard-lockup", r"Watchdog detected hard LOCKUP"),
    ("hung-task", r"INFO: task \S+ blocked for more than \d+ seconds"),
    ("general-protection-fault", r"general protection fault"),
    ("page-fault", r"BUG: unable to handle |BUG: kernel NULL pointer dereference"),
    ("oops", r"Oops: "),
    ("bug", r"kernel BUG at |BUG: "),
    ("warning", r"WARNING: CPU: \d+ PID: \d+ at |WARNING: at |------------\[ cut here \]------------"),
    ("panic", r"Kernel panic - not syncing"),
)
_COMPILED = tuple((kind, re.compile(rx)) for kind, rx in PATTERNS)
KINDS = tuple(kind for kind, _ in PATTERNS)

#: a WARN splat starts with "cut here" and then says WARNING: count the WARNING line only
_CUT_HERE = "------------[ cut here ]------------"
LINE_CHARS = 300         # one reported line at most
EXCERPT_LINES = 12       # the first occurrence and what follows it
EXCERPT_CHARS = 2000
#: the phase of kernel lines before the first progress line
BOOT_PHASE = "boot"

#: the phase lines of images/micro/init ("init-run") and mshare-sga ("attach")
_PHASE_LINE = re.compile(r"mshare-lab: phase (\S+)")
_RIP = re.compile(r"RIP: [0-9a-f]{4}:(?:\[<)?(?:([A-Za-z_.$][\w.$]*)\+0x[0-9a-f]+/0x[0-9a-f]+"
                  r"|(?:0x)?([0-9a-f]{16}))")
_WARN_AT = re.compile(r"WARNING: (?:CPU: \d+ PID: \d+ )?at \S+ ([A-Za-z_.$][\w.$]*)\+0x")
_VARIABLE_TAIL = re.compile(r"(?:,? (?:address|addr|at address|for address)\b.*|, probably for .*"
                            r"|:? [0-9a-f]{4} \[#\d+\].*| \[#\d+\].*|:\s*[0-9a-fx]+\s*$| at \S+:\d+!?.*"
                            r"| mm:\S+.*| - CPU#.*)$")
_OFFSET = re.compile(r"\+0x[0-9a-f]+/0x[0-9a-f]+")
#: kinds whose first line says nothing stable: syzbot's wording instead
_FIXED_HEADERS = {"hung-task": "INFO: task hung", "rcu-stall": "INFO: rcu detected stall"}


@dataclass(frozen=True)
class Finding:
    """All lines of one kind: how many, the first one, where it appeared."""

    kind: str
    count: int
    first: str                   # the first line of this kind (from its pattern on)
    excerpt: str                 # that line and the lines after it
    phase: str | None = None     # the run phase of the first line (None: not on the console)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "first": self.first, "excerpt": self.excerpt,
                "phase": self.phase}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(kind=str(data["kind"]), count=int(data["count"]), first=str(data.get("first", "")),
                   excerpt=str(data.get("excerpt", "")), phase=data.get("phase"))


@dataclass(frozen=True)
class KernelLog:
    """The kernel-log part of a run's result."""

    source: str                                   # "dmesg", "console" or "none"
    findings: tuple[Finding, ...] = ()            # in order of first appearance
    crash_title: str | None = None                # syzbot-style title of the first report
    lines: int = 0                                # kernel-log lines read

    @property
    def clean(self) -> bool:
        return not self.findings

    @property
    def counts(self) -> dict[str, int]:
        return {f.kind: f.count for f in self.findings}

    def finding(self, kind: str) -> Finding | None:
        return next((f for f in self.findings if f.kind == kind), None)

    def describe(self) -> str:
        """One line: ``kernel log: 3 bad-rss-counter (first in attach), 1 warning (resources)``."""
        if self.source == "none":
            return "kernel log: not available"
        if self.clean:
            return f"kernel log: clean ({self.lines} lines)"
        parts = [f"{f.count} {f.kind}" + (f" (first in {f.phase})" if f.phase else "") for f in self.findings]
        return "kernel log: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "clean": self.clean, "lines": self.lines, "counts": self.counts,
                "crash_title": self.crash_title, "findings": [f.to_dict() for f in self.findings]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "KernelLog | None":
        if not data:
            return None
        return cls(source=str(data.get("source", "none")), lines=int(data.get("lines", 0)),
                   crash_title=data.get("crash_title"),
                   findings=tuple(Finding.from_dict(f) for f in data.get("findings", ())))


def classify_line(line: str) -> tuple[str, int] | None:
    """(kind, start of the match) of a kernel-log line, or None for an ordinary line."""
    if frames.PROGRESS in line:
        return None
    for kind, rx in _COMPILED:
        match = rx.search(line)
        if match:
            return kind, match.start()
    return None


def scan(dmesg: str | None, console: str = "", *, system_map: Path | None = None,
         crashed: bool = False) -> KernelLog:
    """The kernel-log summary of a run. ``crashed``: give the first report a crash title."""
    text = dmesg if dmesg else console
    source = "dmesg" if dmesg else ("console" if console else "none")
    lines = [line.rstrip("\r") for line in (text or "").splitlines() if frames.PROGRESS not in line]
    marked = bool(dmesg) and _PHASE_LINE.search(dmesg) is not None
    phases = _console_phases(console) if dmesg and not marked else None
    counts: dict[str, int] = {}
    first: dict[str, tuple[str, str, str | None]] = {}
    order: list[str] = []
    reports: list[tuple[int, str]] = []
    cut_here = -10
    for index, (raw, phase_here) in enumerate(_with_phases(text or "", from_console=not dmesg)):
        hit = classify_line(raw)
        if hit is None:
            continue
        kind, start = hit
        if raw[start:].startswith(_CUT_HERE):
            cut_here = index
            continue          # the WARNING line that follows is the report
        key = raw[start:].strip()
        phase = phases.pop_phase(key) if phases is not None else phase_here
        counts[kind] = counts.get(kind, 0) + 1
        if kind not in first:
            # a WARN's own message comes between "cut here" and the WARNING line
            message = lines[cut_here + 1:index] if kind == "warning" and 0 < index - cut_here <= 4 else []
            first[kind] = (key[:LINE_CHARS], _excerpt(lines, index, start, message), phase)
            order.append(kind)
        reports.append((index, kind))
    findings = tuple(Finding(kind, counts[kind], *first[kind]) for kind in order)
    title = None
    if crashed:
        title = crash_title(lines, _crash_report(lines, reports), system_map)
    return KernelLog(source=source, findings=findings, crash_title=title, lines=len(lines))


#: reports that end a kernel (or do with oops=panic, softlockup_panic...): a crash is
#: named after the first of these, not after an earlier accounting complaint
CRASH_KINDS = ("bad-pagetable", "page-fault", "general-protection-fault", "oops", "kasan", "kfence",
               "soft-lockup", "hard-lockup", "hung-task", "rcu-stall")


def _crash_report(lines: list[str], reports: list[tuple[int, str]]) -> int | None:
    """The line a crash is named after: the first fatal report (an oops, a kernel BUG),
    else a WARNING (panic_on_warn), else any report; never the panic line itself."""
    def first(test) -> int | None:
        return next((i for i, kind in reports if test(i, kind)), None)
    for test in (lambda i, k: k in CRASH_KINDS or (k == "bug" and "kernel BUG at" in lines[i]),
                 lambda i, k: k == "warning",
                 lambda i, k: k != "panic"):
        found = first(test)
        if found is not None:
            return found
    return None


def crash_title(lines: list[str], report: int | None, system_map: Path | None = None) -> str | None:
    """``<first report line without its variable parts> in <function of the RIP>``."""
    if report is None:
        return None
    hit = classify_line(lines[report])
    if hit is None:
        return None
    kind, start = hit
    header = lines[report][start:].strip()
    function = None
    warn_at = _WARN_AT.search(header)
    if warn_at:
        function = warn_at.group(1)
        header = "WARNING"
    elif kind in _FIXED_HEADERS:
        header = _FIXED_HEADERS[kind]
    elif kind == "bug" and header.startswith("kernel BUG at"):
        header = "kernel BUG"
    else:
        header = _OFFSET.sub("", _VARIABLE_TAIL.sub("", header)).rstrip(" :!,")
        if header.startswith("BUG: KASAN: ") or header.startswith("BUG: KFENCE: "):
            header = header[len("BUG: "):]
        if " in " in header:
            return header          # the report names its function itself (KASAN, KFENCE)
    if function is None:
        function = _rip_function(lines[report:report + 60], system_map)
    return f"{header} in {function}" if function else header


def _rip_function(lines: Iterable[str], system_map: Path | None) -> str | None:
    for line in lines:
        match = _RIP.search(line)
        if not match:
            continue
        if match.group(1):
            return match.group(1)
        if system_map is not None:
            return SymbolMap.load(system_map).function(int(match.group(2), 16))
        return None
    return None


@dataclass
class SymbolMap:
    """Text symbols of a kernel's System.map, to name the function an address is in."""

    addresses: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    text_end: int = 0

    @classmethod
    def load(cls, path: Path) -> "SymbolMap":
        pairs = []
        text_end = 0
        try:
            content = path.read_text(errors="replace")
        except OSError:
            return cls()
        for line in content.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            address, kind, name = parts[0], parts[1], parts[2]
            try:
                value = int(address, 16)
            except ValueError:
                continue
            if name == "_etext":
                text_end = value
            if kind in ("t", "T", "w", "W"):
                pairs.append((value, name))
        pairs.sort()
        return cls([a for a, _ in pairs], [n for _, n in pairs], text_end)

    def function(self, address: int) -> str | None:
        """The text symbol at or below ``address``, inside the kernel text; else None."""
        if not self.addresses or address < self.addresses[0]:
            return None
        if self.text_end and address >= self.text_end:
            return None
        return self.names[bisect.bisect_right(self.addresses, address) - 1]


class _ConsolePhases:
    """Kernel lines seen on the console, each with the phase it appeared in, in order."""

    def __init__(self) -> None:
        self._by_text: dict[str, deque[str]] = {}

    def add(self, key: str, phase: str) -> None:
        self._by_text.setdefault(key, deque()).append(phase)

    def pop_phase(self, key: str) -> str | None:
        queue = self._by_text.get(key)
        return queue.popleft() if queue else None


def _console_phases(console: str) -> _ConsolePhases:
    phases = _ConsolePhases()
    for line, phase in _with_phases(console, from_console=True):
        hit = classify_line(line)
        if hit is not None:
            phases.add(line[hit[1]:].strip(), phase)
    return phases


def _with_phases(text: str, *, from_console: bool) -> Iterable[tuple[str, str]]:
    """(line, phase) for each line of ``text`` but the progress lines; the phase follows
    the phase lines of the kernel log, and on the console also the progress lines."""
    phase = BOOT_PHASE
    for raw in text.splitlines():
        if frames.PROGRESS in raw:
            if from_console:
                phase = _phase_of(raw) or phase
            continue
        marker = _PHASE_LINE.search(raw)
        if marker:
            phase = _step_phase(marker.group(1).removeprefix("init-"))
        yield raw.rstrip("\r"), phase


def _step_phase(step: str) -> str:
    # the init's own steps: mounted/scenario are still boot; probe, run, report and
    # poweroff name what it does next
    return BOOT_PHASE if step in ("mounted", "scenario") else step[:40]


def _phase_of(line: str) -> str | None:
    for event in frames.progress_events([line]):
        if not isinstance(event, dict):
            return None
        if event.get("phase") == "boot":
            step = event.get("step")
            return _step_phase(str(step)) if step else None
        phase = event.get("phase")
        return str(phase)[:40] if phase else None
    return None


def _excerpt(lines: list[str], index: int, start: int, before: list[str] | None = None) -> str:
    kept = (before or []) + [lines[index][start:]] + lines[index + 1:index + EXCERPT_LINES]
    kept = kept[:EXCERPT_LINES]
    return "\n".join(line[:LINE_CHARS] for line in kept)[:EXCERPT_CHARS]
