"""Place scenarios on hosts by fit, never overcommitting a host's RAM.

Before anything starts, ``refuse_unplaceable`` checks every scenario against every host
that is up and can run its guest kind: one that fits no host is refused, naming it and
the largest host. While the matrix runs, ``Placement.acquire`` hands the largest waiting
scenario to a host with a free slot and the RAM and vCPUs free (what the lab has running
there is subtracted from the capacity asked at the start); the best fit (least RAM left
over) wins, so the big holes stay open for big guests. ``release`` gives it back.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from ..errors import LimitError
from ..guest.capacity import QEMU_OVERHEAD
from ..units import format_size
from .host import Host


@dataclass
class _Load:
    ram: int = 0
    vcpus: int = 0
    guests: int = 0


@dataclass
class Placement:
    hosts: list[Host]
    #: why a host cannot run a scenario at all (its guest kind), None when it can
    unsuitable: Callable[[Host, object], str | None] = lambda host, scenario: None
    _load: dict[str, _Load] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._load = {host.name: _Load() for host in self.hosts}

    def up(self) -> list[Host]:
        return [h for h in self.hosts if h.down is None]

    def candidates(self, scenario) -> list[Host]:
        """Up hosts that could ever hold the scenario (empty: it can run nowhere now)."""
        shape = scenario.guest
        return [h for h in self.up() if self.unsuitable(h, scenario) is None
                and h.capacity().fits(shape.memory, shape.vcpus)]

    def acquire(self, scenario) -> Host | None:
        """A host for the scenario now (its RAM reserved), or None when none has room yet."""
        shape = scenario.guest
        need = shape.memory + QEMU_OVERHEAD
        with self._lock:
            best: tuple[int, int, Host] | None = None
            for host in self.candidates(scenario):
                load = self._load[host.name]
                cap = host.capacity()
                left = cap.ram - load.ram - need
                if load.guests >= host.parallel or left < 0 or load.vcpus + shape.vcpus > cap.vcpus:
                    continue
                key = (left, load.guests)
                if best is None or key < best[:2]:
                    best = (left, load.guests, host)
            if best is None:
                return None
            host = best[2]
            load = self._load[host.name]
            load.ram += need
            load.vcpus += shape.vcpus
            load.guests += 1
            return host

    def release(self, host: Host, scenario) -> None:
        with self._lock:
            load = self._load[host.name]
            load.ram -= scenario.guest.memory + QEMU_OVERHEAD
            load.vcpus -= scenario.guest.vcpus
            load.guests -= 1

    def running(self, host: Host) -> int:
        with self._lock:
            return self._load[host.name].guests


def largest_first(scenarios: list) -> list[int]:
    """Indexes in placement order: most RAM first, then most vCPUs, then matrix order."""
    return sorted(range(len(scenarios)),
                  key=lambda i: (-scenarios[i].guest.memory, -scenarios[i].guest.vcpus, i))


def refuse_unplaceable(placement: Placement, scenarios: list) -> None:
    """LimitError for the first scenario no host can hold, with the largest host's numbers."""
    hosts = placement.up()
    for scenario in scenarios:
        if placement.candidates(scenario):
            continue
        why = [f"{h.name}: {reason}" for h in hosts if (reason := placement.unsuitable(h, scenario))]
        sized = [h for h in hosts if placement.unsuitable(h, scenario) is None]
        shape = scenario.guest
        where = scenario.source or scenario.scenario_id
        if not sized:
            raise LimitError(f"{where}: no host of the lab can run {scenario.scenario_id}: {'; '.join(why)}",
                             hint="add a host that can run this guest kind to the lab file")
        largest = max(sized, key=lambda h: h.capacity().ram)
        cap = largest.capacity()
        raise LimitError(
            f"{where}: {scenario.scenario_id} fits no host: it needs {format_size(shape.memory)} of guest RAM "
            f"(+{format_size(QEMU_OVERHEAD)} QEMU) and {shape.vcpus} vCPU(s); the largest host, {largest.name}, "
            f"can give {format_size(max(0, cap.ram - QEMU_OVERHEAD))} and {cap.vcpus} vCPU(s) ({cap.detail})",
            hint="lower ram/vcpus in the matrix, raise the host's limits in the lab file, or add a larger host")
