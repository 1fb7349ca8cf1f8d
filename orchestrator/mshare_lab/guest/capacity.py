"""Can the host give a guest the RAM it asks for?

A TCG guest touches its RAM lazily, so MemAvailable right after another guest started
still counts memory that guest will take. The budget therefore subtracts, for every
running lab guest, the part of its RAM that QEMU has not yet touched (its size minus its
resident set), and keeps a margin for the host itself and QEMU's own overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InfraError
from ..units import format_size

#: kept free for the host (page cache, the orchestrator, builds of other engineers)
HOST_MARGIN = 1 << 30
#: QEMU's own memory next to the guest RAM (TCG translation cache, device state)
QEMU_OVERHEAD = 256 << 20


@dataclass(frozen=True)
class MemoryBudget:
    available: int        # MemAvailable
    promised: int         # RAM running lab guests may still take
    margin: int = HOST_MARGIN

    @property
    def free_for_guests(self) -> int:
        return max(0, self.available - self.promised - self.margin)

    def fits(self, guest_memory: int) -> bool:
        return guest_memory + QEMU_OVERHEAD <= self.free_for_guests

    def describe(self, guest_memory: int) -> str:
        return (f"guest wants {format_size(guest_memory)} (+{format_size(QEMU_OVERHEAD)} QEMU), "
                f"host has {format_size(self.available)} available, running lab guests may still take "
                f"{format_size(self.promised)}, margin {format_size(self.margin)}")


def mem_available(meminfo: Path = Path("/proc/meminfo")) -> int:
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise InfraError(f"{meminfo} has no MemAvailable line (host kernel older than 3.14?)")


def hugepages_free(meminfo: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    """(free huge pages, huge page size in bytes) of the host's default huge page size."""
    values = {}
    for line in meminfo.read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = rest.split()
    return int(values.get("HugePages_Free", ["0"])[0]), int(values.get("Hugepagesize", ["2048"])[0]) * 1024
