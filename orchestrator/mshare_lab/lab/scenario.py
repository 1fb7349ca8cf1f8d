"""A scenario: one workload on one kernel in one guest shape, and what it is expected to do.

Passive description (labgrid's resources): the matrix expands into these, the runner
executes them, the results store keys on ``scenario_id``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..options import WorkloadSpec
from ..units import short_size

OUTCOMES = ("completed", "oom", "guest-panic", "guest-hang", "unsupported", "infra-error")


@dataclass(frozen=True)
class GuestShape:
    memory: int = 4 << 30         # guest RAM in bytes
    vcpus: int = 2
    image: str = "micro"          # "micro" (initramfs) or "debian" (disk image, Ansible)
    timeout: float = 600.0        # seconds before the run is declared a guest-hang
    hugepage_backing: bool = False  # back guest RAM with host huge pages
    #: micro guests: "key=value" sysctls the init sets before the probe (Python API; the
    #: kernel tests arm the CI kernel's report trigger with it)
    sysctls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # stored runs give a list back; keep the shape hashable
        object.__setattr__(self, "sysctls", tuple(self.sysctls))


@dataclass(frozen=True)
class Scenario:
    kernel: str                   # name of a kernel artifact (``mshare-lab kernel list``)
    workload: WorkloadSpec
    guest: GuestShape = GuestShape()
    repeat: int = 1               # 1-based index among the repeats of the same point
    expect: dict[str, Any] = field(default_factory=dict)
    source: str | None = None     # "file:line" of the matrix entry it came from

    @property
    def scenario_id(self) -> str:
        """Readable and stable: ``debian-6.1/shmem/1G/x1500/ram4G#2``."""
        w = self.workload
        image = "" if self.guest.image == "micro" else f"/{self.guest.image}"
        return (f"{self.kernel}/{w.mechanism}/{short_size(w.sga)}/x{w.clients}"
                f"/ram{short_size(self.guest.memory)}{image}#{self.repeat}")

    @property
    def point_id(self) -> str:
        """The id without the repeat: repeats of one point are compared as a sample."""
        return self.scenario_id.rsplit("#", 1)[0]
