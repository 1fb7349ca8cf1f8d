"""Mechanism detection on synthetic trees: one tiny tree per patch-series variant.

Each tree holds only the lines the real series add (syscall table rows, uapi headers,
mm/mshare.c, Kconfig switch), so a detector that guesses instead of reading fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mshare_lab.kernel import detect

STOCK_TABLE = """\
# 64-bit system call numbers and entry vectors
0	common	read			sys_read
450	common	set_mempolicy_home_node	sys_set_mempolicy_home_node
451	common	cachestat		sys_cachestat
452	common	fchmodat2		sys_fchmodat2
512	x32	rt_sigaction		compat_sys_rt_sigaction
"""

STOCK_CONFIG = {"CONFIG_SHMEM": "y", "CONFIG_TMPFS": "y", "CONFIG_SYSVIPC": "y",
                "CONFIG_TRANSPARENT_HUGEPAGE": "y", "CONFIG_HUGETLBFS": "y"}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_stock_tree_declares_only_config_mechanisms(tmp_path):
    tree = make_tree(tmp_path, {detect.SYSCALL_TABLE: STOCK_TABLE,
                                detect.MMAN_COMMON: "#define MAP_UNINITIALIZED 0x4000000\n"})
    assert detect.detect(tree, STOCK_CONFIG) == {"shmem": {}, "sysv": {}, "thp": {}, "hugetlb": {}}


@pytest.mark.parametrize("option, mechanism", [
    ("CONFIG_SYSVIPC", "sysv"), ("CONFIG_HUGETLBFS", "hugetlb"),
    ("CONFIG_TRANSPARENT_HUGEPAGE", "thp"), ("CONFIG_TMPFS", "shmem"),
])
def test_config_mechanism_absent_when_option_off(option, mechanism):
    config = dict(STOCK_CONFIG, **{option: "n"})
    assert mechanism not in detect.from_config(config)


@pytest.mark.parametrize("nr_mshare, nr_unlink", [(450, 451), (451, 452)])
def test_mshare_syscalls_numbers_come_from_the_table(tmp_path, nr_mshare, nr_unlink):
    # RFC (2022-01) used 450/451, v1 (2022-04) 451/452: both must be read, not assumed
    table = ("0	common	read	sys_read\n"
             f"{nr_mshare}	common	mshare			sys_mshare\n"
             f"{nr_unlink}	common	mshare_unlink		sys_mshare_unlink\n")
    tree = make_tree(tmp_path, {detect.SYSCALL_TABLE: table,
                                detect.MSHARE_SOURCE: 'static struct file_system_type mshare_fs = { .name = "msharefs" };\n'})
    found = detect.from_tree(tree)
    assert found == {"mshare-syscall": {"nr_mshare": nr_mshare, "nr_mshare_unlink": nr_unlink}}


def test_x32_rows_are_not_taken_for_x86_64(tmp_path):
    table = "600	x32	mshare	sys_mshare\n601	x32	mshare_unlink	sys_mshare_unlink\n"
    assert detect.from_tree(make_tree(tmp_path, {detect.SYSCALL_TABLE: table})) == {}


def test_msharefs_2022_file_and_mmap(tmp_path):
    tree = make_tree(tmp_path, {
        detect.SYSCALL_TABLE: STOCK_TABLE,
        detect.MSHARE_SOURCE: 'static struct file_system_type mshare_fs = {\n\t.name = "msharefs",\n};\n',
    })
    assert detect.from_tree(tree) == {"msharefs": {}}


RFC_V3_UAPI = """\
struct mshare_info { __u64 start; __u64 size; };
#define MSHAREFS_GET_SIZE	_IOR('x', 0,  struct mshare_info)
#define MSHAREFS_SET_SIZE	_IOW('x', 1,  struct mshare_info)
#define MSHAREFS_CREATE_MAPPING	_IOW('x', 2,  struct mshare_create)
#define MSHAREFS_UNMAP		_IOW('x', 3,  struct mshare_unmap)
"""
V3_UAPI = """\
struct mshare_create { __u64 region_offset; __u64 size; __u64 offset; __u32 prot; __u32 flags; __u32 fd; };
#define MSHAREFS_CREATE_MAPPING	_IOW('x', 0,  struct mshare_create)
#define MSHAREFS_UNMAP		_IOW('x', 1,  struct mshare_unmap)
"""
MSHARE_KCONFIG = "config MSHARE\n\tbool \"Enable msharefs\"\n\tdepends on X86_64\n"


def test_msharefs_ioctl_rfc_v3_is_abi_2024_without_kconfig_switch(tmp_path):
    tree = make_tree(tmp_path, {detect.MSHAREFS_UAPI: RFC_V3_UAPI,
                                detect.MSHARE_SOURCE: '.name = "msharefs",\n',
                                detect.MM_KCONFIG: "config SHMEM\n"})
    assert detect.detect(tree, STOCK_CONFIG)["msharefs-ioctl"] == {"abi": "2024"}
    assert "msharefs" not in detect.from_tree(tree)


def test_msharefs_ioctl_v3_is_abi_2025_and_needs_config_mshare(tmp_path):
    tree = make_tree(tmp_path, {detect.MSHAREFS_UAPI: V3_UAPI, detect.MM_KCONFIG: MSHARE_KCONFIG})
    assert "msharefs-ioctl" not in detect.detect(tree, STOCK_CONFIG)
    enabled = detect.detect(tree, dict(STOCK_CONFIG, CONFIG_MSHARE="y"))
    assert enabled["msharefs-ioctl"] == {"abi": "2025"}


@pytest.mark.parametrize("define, value", [
    ("#define MAP_SHARED_PT\t0x200000\t/* share page tables */", 0x200000),
    ("# define MAP_SHARED_PT 0x400000", 0x400000),
    ("#define MAP_SHARED_PT 4194304", 4194304),
])
def test_ptshare_flag_is_read_from_the_header(tmp_path, define, value):
    tree = make_tree(tmp_path, {detect.MMAN_COMMON: f"#define MAP_UNINITIALIZED 0x4000000\n{define}\n"})
    assert detect.from_tree(tree) == {"ptshare": {"map_flag": value}}


def test_anolis_ptshare_needs_its_kconfig_switch(tmp_path):
    tree = make_tree(tmp_path, {detect.MMAN_COMMON: "#define MAP_SHARED_PT 0x200000\n",
                                detect.MM_KCONFIG: "config PAGETABLE_SHARE\n\tbool \"share\"\n"})
    assert "ptshare" not in detect.detect(tree, STOCK_CONFIG)
    assert detect.detect(tree, dict(STOCK_CONFIG, CONFIG_PAGETABLE_SHARE="y"))["ptshare"] == {"map_flag": 0x200000}


def test_real_stock_612_tree_declares_no_series(pristine_612):
    found = detect.detect(pristine_612, STOCK_CONFIG)
    assert set(found) == {"shmem", "sysv", "thp", "hugetlb"}
    # and the table really is read: upstream gave 451 to cachestat
    assert detect.syscall_numbers(pristine_612)["cachestat"] == 451
