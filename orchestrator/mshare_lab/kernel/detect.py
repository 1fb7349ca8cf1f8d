"""Which page-table sharing mechanisms a kernel offers, detected, never guessed.

From the resolved .config: the stock mechanisms (shmem, sysv, thp, hugetlb). From the
(patched) source tree: the out-of-tree series, by the interfaces they add, with the
parameters user space needs (syscall numbers, ioctl ABI generation, mmap flag value).
docs/kernel.md lists the variants and how each is recognised.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SYSCALL_TABLE = "arch/x86/entry/syscalls/syscall_64.tbl"
MSHAREFS_UAPI = "include/uapi/linux/msharefs.h"
MSHARE_SOURCE = "mm/mshare.c"
MMAN_COMMON = "include/uapi/asm-generic/mman-common.h"
MM_KCONFIG = "mm/Kconfig"

# Kconfig switches some series put their code behind: if the tree defines the symbol,
# the mechanism exists only when the config enables it (RFC v3 msharefs has none).
_GATES = {
    "mshare-syscall": "MSHARE",
    "msharefs": "MSHARE",
    "msharefs-ioctl": "MSHARE",
    "ptshare": "PAGETABLE_SHARE",
}

Mechanisms = dict[str, dict[str, Any]]


def from_config(config: dict[str, str]) -> Mechanisms:
    """The stock mechanisms a config enables (empty parameter dicts)."""
    on = {k for k, v in config.items() if v in ("y", "m")}
    found: Mechanisms = {}
    if {"CONFIG_SHMEM", "CONFIG_TMPFS"} <= on:
        found["shmem"] = {}
    if "CONFIG_SYSVIPC" in on:
        found["sysv"] = {}
    if {"CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_SHMEM"} <= on:
        found["thp"] = {}
    if "CONFIG_HUGETLBFS" in on:
        found["hugetlb"] = {}
    return found


def from_tree(tree: Path, config: dict[str, str] | None = None) -> Mechanisms:
    """The patch-series mechanisms present in a source tree (and enabled by ``config``)."""
    found: Mechanisms = {}
    syscalls = syscall_numbers(tree)
    if "mshare" in syscalls and "mshare_unlink" in syscalls:
        found["mshare-syscall"] = {"nr_mshare": syscalls["mshare"],
                                   "nr_mshare_unlink": syscalls["mshare_unlink"]}
    uapi = _read(tree / MSHAREFS_UAPI)
    if uapi is not None and "MSHAREFS_CREATE_MAPPING" in uapi:
        # RFC v3 / v1 set the size with an ioctl; v2 / v3 use ftruncate + region_offset
        found["msharefs-ioctl"] = {"abi": "2024" if "MSHAREFS_SET_SIZE" in uapi else "2025"}
    elif not found and _defines_msharefs(tree):
        found["msharefs"] = {}
    flag = map_flag(tree)
    if flag is not None:
        found["ptshare"] = {"map_flag": flag}
    if config is not None:
        found = {name: params for name, params in found.items() if _gate_open(tree, name, config)}
    return found


def detect(tree: Path | None, config: dict[str, str]) -> Mechanisms:
    """Everything a kernel declares: config mechanisms plus, with a tree, the series ones."""
    found = from_config(config)
    if tree is not None:
        found.update(from_tree(tree, config))
    return found


def syscall_numbers(tree: Path) -> dict[str, int]:
    """name -> number for the x86_64 syscalls of the 64-bit ABI ('common' or '64')."""
    table = _read(tree / SYSCALL_TABLE)
    numbers: dict[str, int] = {}
    for line in (table or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[1] in ("common", "64"):
            numbers[fields[2]] = int(fields[0])
    return numbers


_MAP_SHARED_PT_RE = re.compile(r"^\s*#\s*define\s+MAP_SHARED_PT\s+(0[xX][0-9a-fA-F]+|\d+)", re.MULTILINE)


def map_flag(tree: Path) -> int | None:
    match = _MAP_SHARED_PT_RE.search(_read(tree / MMAN_COMMON) or "")
    return int(match.group(1), 0) if match else None


def _defines_msharefs(tree: Path) -> bool:
    source = _read(tree / MSHARE_SOURCE)
    return source is not None and '"msharefs"' in source


def _gate_open(tree: Path, mechanism: str, config: dict[str, str]) -> bool:
    symbol = _GATES.get(mechanism)
    if symbol is None:
        return True
    kconfig = _read(tree / MM_KCONFIG) or ""
    if not re.search(rf"^config {symbol}\s*$", kconfig, re.MULTILINE):
        return True          # no switch in this tree: built whenever the code is there
    return config.get(f"CONFIG_{symbol}", "n") in ("y", "m")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None
