"""Can the target hold this run?  Checked before anything forks or boots.

A run needs, in the RAM of the machine it runs on (the host for ``local``, the guest for
a matrix scenario)::

    clients x (per-client cost + private page tables) + region + shared page tables

The per-client cost is what one idle client holds at the ready barrier: its private
pages, its fixed page tables and its kernel stack (``client_cost`` in the result
document, calibrated per kernel and image by ``workload.calibration``).  Private page
tables are paid by every client of a mechanism that does not share them; a sharing
mechanism pays one copy.  A run that does not fit is refused at once with the numbers
and the largest client count that fits, unless it is meant to run out of memory (a
scenario with ``expect: {outcome: oom}``; ``local --memory-limit`` contains it in a
cgroup).  Process counts are never allowed past what the kernel can give: an OOM is a
result, a fork storm that takes the machine down never is.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .. import mechanisms
from ..errors import LimitError
from ..options import WorkloadSpec
from ..units import format_size

#: x86_64 THREAD_SIZE: the kernel stack every task has (16 KiB without KASAN)
KERNEL_STACK_BYTES = 16 << 10
#: the built-in per-client estimate when no run of the kernel and image measured it:
#: measured on Debian 6.1 (host, 2000 clients): private 56 KiB + page tables 40 KiB +
#: kernel stack 16 KiB, rounded up for the kernel's per-task objects (task_struct, mm,
#: VMAs) that no /proc field of the client shows
BUILTIN_CLIENT_BYTES = 160 << 10
#: processes a run has besides its clients (coordinator, owner) plus headroom for what
#: the target runs meanwhile
EXTRA_PROCESSES = 64
#: PID_MAX_LIMIT on 64-bit kernels: kernel.pid_max cannot be raised above it
PID_MAX_LIMIT = 4 << 20
#: memory areas one client maps (binary, stack, vdso, control area, region): far below
#: any vm.max_map_count, which is per process
CLIENT_MAPS = 64
#: RAM a guest's own kernel and userspace hold before the workload starts
GUEST_RESERVE_BYTES = {"micro": 96 << 20, "debian": 320 << 20}
PTE_BYTES = 8


@dataclass(frozen=True)
class ClientCost:
    """Bytes one client costs and where the figure came from."""

    per_client_bytes: int
    source: str                       # "measured" or "built-in estimate"
    runs: tuple[str, ...] = ()        # run ids it was measured in

    @classmethod
    def builtin(cls) -> "ClientCost":
        return cls(BUILTIN_CLIENT_BYTES, "built-in estimate")

    def describe(self) -> str:
        what = f"{format_size(self.per_client_bytes)} per client"
        if not self.runs:
            return f"{what} ({self.source}: no run measured it)"
        shown = ", ".join(self.runs[:3]) + (f" and {len(self.runs) - 3} more" if len(self.runs) > 3 else "")
        return f"{what} (measured, median of {len(self.runs)} run(s): {shown})"


@dataclass(frozen=True)
class Demand:
    """What a run needs in RAM, as a function of its client count."""

    clients: int
    region_bytes: int
    client_bytes: int                 # per client, the measured fixed cost
    private_pt_per_client: int        # per client, 0 when the mechanism shares page tables
    shared_pt_bytes: int              # one copy, for a sharing mechanism

    def total(self, clients: int | None = None) -> int:
        n = self.clients if clients is None else clients
        return n * (self.client_bytes + self.private_pt_per_client) + self.region_bytes + self.shared_pt_bytes

    def largest_fitting(self, ram: int) -> int:
        room = ram - self.region_bytes - self.shared_pt_bytes
        per = self.client_bytes + self.private_pt_per_client
        return max(0, room // per) if per else self.clients


def region_pagetable_bytes(spec: WorkloadSpec) -> int:
    """Page tables one process needs for the populated part of the region (PTEs + 1/512 above)."""
    page = mechanisms.get(spec.mechanism).page_size
    touched = math.ceil(spec.sga * spec.populate / page)
    return touched * PTE_BYTES * 513 // 512


def demand(spec: WorkloadSpec, cost: ClientCost) -> Demand:
    from .predict import SHARED_ONCE
    pt = region_pagetable_bytes(spec)
    shares = spec.mechanism in SHARED_ONCE
    return Demand(spec.clients, spec.sga, cost.per_client_bytes, 0 if shares else pt, pt if shares else 0)


def check_memory(spec: WorkloadSpec, ram: int, cost: ClientCost, *, where: str, what: str,
                 hint: str) -> Demand:
    """LimitError when the run needs more than ``ram``; the demand otherwise."""
    need = demand(spec, cost)
    if need.total() <= ram:
        return need
    fits = need.largest_fitting(ram)
    pt = (f"{format_size(need.private_pt_per_client)} private page tables per client"
          if need.private_pt_per_client else f"{format_size(need.shared_pt_bytes)} shared page tables")
    detail = (f"{where}: {spec.clients} clients x {format_size(spec.sga)} {spec.mechanism} needs "
              f"{format_size(need.total())} but {what} has {format_size(ram)}: "
              f"{format_size(need.client_bytes)} per client ({cost.source}) + {pt} + the region")
    if fits == 0:
        detail += "; the region alone does not fit"
    else:
        detail += f"; at most {fits} clients fit"
    raise LimitError(detail, hint=hint)


def check_processes(clients: int, *, running: int, pid_max: int, threads_max: int, may_raise: bool,
                    where: str) -> None:
    """LimitError when the target cannot hold the processes; never past PID_MAX_LIMIT."""
    need = clients + EXTRA_PROCESSES
    if running + need > PID_MAX_LIMIT:
        raise LimitError(f"{where}: {clients} clients need {need} processes and {running} are running, "
                         f"more than any kernel.pid_max allows ({PID_MAX_LIMIT}); at most "
                         f"{max(0, PID_MAX_LIMIT - running - EXTRA_PROCESSES)} clients fit",
                         hint="lower --clients")
    if may_raise:
        return   # the workload raises them by exactly what the run needs, and puts them back
    for name, limit in (("kernel.pid_max", pid_max), ("kernel.threads-max", threads_max)):
        if limit > 0 and running + need > limit:
            raise LimitError(f"{where}: {name} {limit} is too small for {need} more processes "
                             f"({running} running); at most {max(0, limit - running - EXTRA_PROCESSES)} "
                             f"clients fit",
                             hint=f"as root: sysctl {name}={running + need} (what this run needs), "
                                  "or lower --clients")


# --- this host ------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostLimits:
    mem_available: int
    running: int
    pid_max: int
    threads_max: int
    max_map_count: int
    root: bool

    @classmethod
    def read(cls) -> "HostLimits":
        meminfo = _meminfo()
        return cls(mem_available=meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
                   running=_running_tasks(), pid_max=_sysctl("kernel/pid_max"),
                   threads_max=_sysctl("kernel/threads-max"), max_map_count=_sysctl("vm/max_map_count"),
                   root=os.geteuid() == 0)


def check_local(spec: WorkloadSpec, cost: ClientCost | None = None, limits: HostLimits | None = None) -> Demand:
    """Refuse a ``local`` run this host cannot hold (LimitError, exit 2), before any fork."""
    cost = cost or ClientCost.builtin()
    limits = limits or HostLimits.read()
    where = "mshare-lab local"
    check_processes(spec.clients, running=limits.running, pid_max=limits.pid_max,
                    threads_max=limits.threads_max, may_raise=limits.root, where=where)
    if 0 < limits.max_map_count < CLIENT_MAPS:
        raise LimitError(f"{where}: vm.max_map_count {limits.max_map_count} is below the {CLIENT_MAPS} "
                         "memory areas a client maps", hint=f"sysctl vm.max_map_count={CLIENT_MAPS}")
    if spec.memory_limit:
        # the clients live in a memory cgroup of that size: running out inside it is the
        # OOM the user asked for; the host must only hold the cgroup and the region
        if spec.memory_limit + spec.sga > limits.mem_available:
            raise LimitError(f"{where}: --memory-limit {format_size(spec.memory_limit)} plus the "
                             f"{format_size(spec.sga)} region is more than the "
                             f"{format_size(limits.mem_available)} this host has available",
                             hint="lower --memory-limit or --sga")
        return demand(spec, cost)
    return check_memory(spec, limits.mem_available, cost, where=where, what="this host (MemAvailable)",
                        hint="lower --clients or --sga, or pass --memory-limit to contain an OOM "
                             "you mean to reproduce")


def _meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    return out


def _running_tasks() -> int:
    # /proc/loadavg: "0.10 0.20 0.30 2/345 6789": 345 tasks (threads) exist now
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])
    except (OSError, IndexError, ValueError):
        return 0


def _sysctl(name: str) -> int:
    try:
        return int(Path("/proc/sys", name).read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return 0


# --- a guest scenario -----------------------------------------------------------------------

#: processes a guest runs besides the workload (init, kernel threads)
GUEST_RUNNING = 200


def check_scenario(scenario, cost: ClientCost | None = None) -> None:
    """Refuse a matrix scenario its guest cannot hold, before any guest boots.

    A scenario that expects an OOM may need more RAM than the guest has (that is its
    point), never more processes than a kernel can make."""
    cost = cost or ClientCost.builtin()
    spec, guest = scenario.workload, scenario.guest
    where = f"{scenario.source or '<matrix>'}: {scenario.scenario_id}"
    check_processes(spec.clients, running=GUEST_RUNNING, pid_max=0, threads_max=0, may_raise=True, where=where)
    if "oom" in (scenario.expect.get("outcome") or []) or spec.memory_limit:
        return
    reserve = GUEST_RESERVE_BYTES.get(guest.image, GUEST_RESERVE_BYTES["micro"])
    check_memory(spec, guest.memory - reserve, cost, where=where,
                 what=f"the {guest.image} guest ({format_size(guest.memory)} less {format_size(reserve)} "
                      "for its own kernel and userspace)",
                 hint="lower clients or sga, raise ram, or say expect: {outcome: oom} when running out "
                      "of memory is the point")
