"""Short live lines while scenarios run: which one, which phase, how long so far.

Guests under software emulation take minutes; a silent terminal looks like a hang and a
line per progress event drowns it. ``ProgressThrottle`` turns the guest's progress events
into a line when the phase changes (and at most every few seconds within one phase);
``LiveBoard`` prefixes lines with ``[i/N elapsed]`` and repeats the phase of scenarios
that stay quiet, so a long transaction phase still shows signs of life.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from ..units import format_size

Progress = Callable[[str], None]

#: a phase with changing counters (clients attaching) is re-reported at most this often
SAME_PHASE_INTERVAL = 10.0
#: a scenario that said nothing for this long gets a "still <phase>" line
HEARTBEAT = 30.0


def describe_event(event: dict[str, Any]) -> tuple[str, str]:
    """(phase label, detail) of one MSHARE-LAB-PROGRESS event (init or workload)."""
    phase = str(event.get("phase", "?"))
    step = event.get("step")
    label = f"{phase}: {step}" if step else phase
    details = []
    if event.get("detail"):
        details.append(str(event["detail"]))
    attached, wanted = event.get("clients_attached"), event.get("clients_requested")
    if isinstance(attached, int) and isinstance(wanted, int):
        details.append(f"{attached}/{wanted} clients")
    delta = event.get("pagetables_delta_bytes")
    if isinstance(delta, (int, float)) and not isinstance(delta, bool) and delta:
        details.append(f"PageTables +{format_size(delta)}")
    return label, ", ".join(details)


class ProgressThrottle:
    def __init__(self, say: Progress, interval: float = SAME_PHASE_INTERVAL):
        self.say = say
        self.interval = interval
        self._label: str | None = None
        self._detail = ""
        self._last = 0.0

    def event(self, event: dict[str, Any]) -> None:
        label, detail = describe_event(event)
        now = time.monotonic()
        same = label == self._label
        if same and (detail == self._detail or now - self._last < self.interval):
            return
        self._label, self._detail, self._last = label, detail, now
        self.say(f"{label}" + (f" ({detail})" if detail else ""))


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class LiveBoard:
    """Progress of a matrix run: one line per phase change, a heartbeat for quiet ones."""

    def __init__(self, total: int, say: Progress, heartbeat: float = HEARTBEAT):
        self.total = total
        self.say = say
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._running: dict[int, tuple[str, str, float, float]] = {}   # index -> id, phase, start, last line
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="progress-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def phase(self, index: int, scenario_id: str, phase: str) -> None:
        now = time.monotonic()
        with self._lock:
            _, _, began, _ = self._running.get(index, (scenario_id, phase, now, now))
            self._running[index] = (scenario_id, phase, began, now)
            self._emit(index, scenario_id, phase, now - began)

    def done(self, index: int, scenario_id: str, record: Any) -> None:
        with self._lock:
            self._running.pop(index, None)
            verdict = ("expectations met" if not record.expectation_failures
                       else f"{len(record.expectation_failures)} expectation(s) NOT met")
            log = getattr(record, "kernel_log", None)
            # a kernel that warned or corrupted its accounting says so in the same line
            complaints = f", {log.describe()}" if log is not None and not log.clean else ""
            self._emit(index, scenario_id, f"{record.outcome}, {verdict}{complaints} "
                       f"(wall {record.wall_seconds:.1f}s, guest {record.guest_seconds:.1f}s)",
                       record.wall_seconds)

    def _emit(self, index: int, scenario_id: str, text: str, elapsed: float) -> None:
        self.say(f"[{index + 1}/{self.total} {format_elapsed(elapsed)}] {scenario_id}: {text}")

    def _beat(self) -> None:
        while not self._stop.wait(min(5.0, self.heartbeat)):
            now = time.monotonic()
            with self._lock:
                for index, (sid, phase, began, last) in list(self._running.items()):
                    if now - last >= self.heartbeat:
                        self._running[index] = (sid, phase, began, now)
                        self._emit(index, sid, f"still {phase}", now - began)
