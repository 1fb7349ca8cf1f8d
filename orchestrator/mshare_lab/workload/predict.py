"""What page tables a region shared by many processes costs: pure arithmetic.

Without sharing every process maps every page itself: 8 bytes of page-table entry per
mapped page per process (x86_64; the upper levels add about 1/512 more).  The Oracle case
that motivated mshare: a 300 GiB SGA mapped by 1500 processes needs 878.9 GiB of PTEs,
more than the 512 GiB machine has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .. import mechanisms

PTE_BYTES = 8
SMALL_PAGE = 4096
#: what one client costs besides the region's page tables (private memory, fixed page
#: tables, kernel stack): the built-in estimate of ``workload.feasibility``; ``predict
#: --kernel`` uses the figure measured by earlier runs instead
from .feasibility import BUILTIN_CLIENT_BYTES as CLIENT_FIXED_BYTES  # noqa: E402
#: mechanisms whose page tables one copy serves every process (when the kernel has them)
SHARED_ONCE = {"hugetlb", "ptshare", "msharefs", "mshare-syscall", "msharefs-ioctl"}


@dataclass(frozen=True)
class Scaled:
    """A lab-sized scenario with the same page-table-to-RAM and region-to-RAM pressure."""

    ram: int
    sga: int
    clients: int
    pagetable_bytes: int
    pressure: float


@dataclass(frozen=True)
class Prediction:
    mechanism: str
    sga: int
    clients: int
    ram: int
    theory_pte_bytes: int          # 4 KiB pages, no sharing: the brief's theory
    private_pte_bytes: int         # no sharing, at the mechanism's page size
    mechanism_pte_bytes: int       # what the mechanism should cost when it shares
    client_fixed_bytes: int        # every client's own cost (per-client cost x clients)
    total_bytes: int               # region + mechanism page tables + client cost
    fits: bool
    pressure: float                # theory page tables / RAM
    scaled: Scaled | None
    per_client_bytes: int = CLIENT_FIXED_BYTES
    client_cost_source: str = "built-in estimate"
    client_cost_runs: tuple[str, ...] = ()
    mechanism_pressure: float = 0.0   # the mechanism's page tables / RAM (shared: one copy)
    largest_fitting_clients: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pte_bytes(region: int, clients: int, page_size: int = SMALL_PAGE) -> int:
    return math.ceil(region / page_size) * PTE_BYTES * clients


def mechanism_pte_bytes(mechanism: str, region: int, clients: int) -> int:
    page = mechanisms.get(mechanism).page_size
    if mechanism in SHARED_ONCE:
        return pte_bytes(region, 1, page)
    return pte_bytes(region, clients, page)


def predict(sga: int, clients: int, ram: int, mechanism: str = "shmem", lab_ram: int | None = None,
            cost=None) -> Prediction:
    """``cost``: a ``feasibility.ClientCost`` (measured per kernel and image), else the estimate."""
    from .feasibility import ClientCost
    mechanisms.get(mechanism)   # ValueError for an unknown name
    cost = cost or ClientCost.builtin()
    theory = pte_bytes(sga, clients)
    private = pte_bytes(sga, clients, mechanisms.get(mechanism).page_size)
    with_mech = mechanism_pte_bytes(mechanism, sga, clients)
    fixed = cost.per_client_bytes * clients
    total = sga + with_mech + fixed
    scaled = None
    if lab_ram:
        scaled = scale(sga, clients, ram, lab_ram, mechanism)
    per_pt = 0 if mechanism in SHARED_ONCE else with_mech // max(clients, 1)
    room = ram - sga - (with_mech if mechanism in SHARED_ONCE else 0)
    largest = max(0, room // (cost.per_client_bytes + per_pt)) if cost.per_client_bytes + per_pt else clients
    return Prediction(mechanism, sga, clients, ram, theory, private, with_mech, fixed, total,
                      total <= ram, theory / ram, scaled, cost.per_client_bytes, cost.source, tuple(cost.runs),
                      with_mech / ram, int(largest))


def scale(sga: int, clients: int, ram: int, lab_ram: int, mechanism: str = "shmem") -> Scaled:
    """Shrink the region with the RAM and keep the clients: page tables per byte of RAM
    (clients x region / RAM) and region per byte of RAM stay what they were."""
    unit = max(mechanisms.get(mechanism).page_size, 1 << 20)
    region = max(unit, sga * lab_ram // ram // unit * unit)
    pt = pte_bytes(region, clients)
    return Scaled(lab_ram, region, clients, pt, pt / lab_ram)
