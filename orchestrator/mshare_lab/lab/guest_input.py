"""What every guest kind gives the guest: workload flags, kernel flags, huge pages, the kernel.

Shared by the micro kind (``lab.micro_guest``) and the full Debian kind
(``deploy.full_guest``), so neither imports the runner and the runner imports neither.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import NotFoundError
from ..options import WorkloadSpec, workload_argv

if TYPE_CHECKING:
    from ..kernel.artifact import KernelArtifact

Progress = Callable[[str], None]
HUGEPAGE_SIZE = 2 << 20


def _quiet(_line: str) -> None:
    pass


def workload_args(spec: WorkloadSpec) -> list[str]:
    """``mshare-sga run`` flags for a workload spec, from the one option declaration."""
    return workload_argv(spec)


def kernel_flags(mechanisms: dict[str, Any]) -> list[str]:
    """The kernel-parameter flags of a kernel (syscall numbers, ioctl ABI, MAP_SHARED_PT)."""
    from ..workload.build import kernel_flags as flags
    return list(flags(mechanisms))


def hugepages_needed(spec: WorkloadSpec) -> int | None:
    """2 MiB pages a hugetlb region needs (None for other mechanisms)."""
    if spec.mechanism != "hugetlb":
        return None
    return math.ceil(spec.sga / HUGEPAGE_SIZE)


def system_map(kernel: "KernelArtifact") -> Path | None:
    """The artifact's System.map (built kernels keep one), to name a crash's function."""
    path = Path(kernel.path) / "System.map"
    return path if path.is_file() else None


def resolve_kernel(name: str, progress: Progress = _quiet) -> "KernelArtifact":
    """The named kernel artifact; the stock Debian kernel is fetched on first use."""
    from ..kernel import store
    try:
        return store.get(name)
    except NotFoundError:
        if not name.startswith("debian-"):
            raise
    from ..kernel.fetch import fetch_debian
    fetched = fetch_debian(progress)
    if fetched.name != name:
        raise NotFoundError(f"no kernel named {name!r}; the Debian kernel apt offers is {fetched.name}",
                            hint=f"use kernel: {fetched.name} or build {name} with `mshare-lab kernel build`")
    return fetched
