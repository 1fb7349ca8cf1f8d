"""The sharing mechanisms the lab drives, as passive descriptions.

The C workload implements them (workloads/sga/); this table is what the Python side
needs to know about each: how it is spelled, which page size backs it (that sets the
private page-table cost the measurement compares against) and whether it needs a
patched kernel.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mechanism:
    name: str
    summary: str
    page_size: int          # bytes per mapped page of the region
    needs_patched_kernel: bool


MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (
    Mechanism("shmem", "tmpfs file, MAP_SHARED, 4 KiB pages", 4096, False),
    Mechanism("sysv", "shmget/shmat by key, as Oracle allocates an SGA", 4096, False),
    Mechanism("thp", "shmem backed by transparent huge pages", 2 << 20, False),
    Mechanism("hugetlb", "hugetlbfs 2 MiB pages, 1 GiB aligned: stock PMD sharing", 2 << 20, False),
    Mechanism("ptshare", "MAP_SHARED|MAP_SHARED_PT on a tmpfs file (ptshare RFCs)", 4096, True),
    Mechanism("msharefs", "msharefs file + mmap, mshare_info (2022 v2)", 4096, True),
    Mechanism("mshare-syscall", "mshare()/mshare_unlink() syscalls (2022 RFC/v1)", 4096, True),
    Mechanism("msharefs-ioctl", "msharefs with MSHAREFS_* ioctls (2024-2025)", 4096, True),
)}

NAMES: tuple[str, ...] = tuple(MECHANISMS)


def get(name: str) -> Mechanism:
    try:
        return MECHANISMS[name]
    except KeyError:
        raise ValueError(f"unknown mechanism '{name}'; choose one of: {', '.join(NAMES)}") from None
