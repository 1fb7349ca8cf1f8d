"""Building mshare-sga (static, cached by source hash), kernel flags, the result model."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from mshare_lab.errors import ConfigError, ToolError
from mshare_lab.workload import build
from mshare_lab.workload.result import ResultSchemaError, WorkloadResult


def test_binary_is_static_and_cached():
    first = build.ensure_binary()
    assert first.is_file() and first.stat().st_mode & 0o111
    assert build.ensure_binary() == first
    assert first.parent.name == build.source_hash()
    headers = subprocess.run(["readelf", "-l", str(first)], capture_output=True, text=True, check=True).stdout
    assert "INTERP" not in headers          # no dynamic loader: runs in a bare initramfs
    probe = subprocess.run([str(first), "probe"], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0
    assert json.loads(probe.stdout)["mechanisms"]["shmem"]["supported"] is True


def test_source_change_rebuilds_and_failure_names_the_log(tmp_path):
    src = tmp_path / "sga"
    shutil.copytree(build.SOURCE_DIR, src, ignore=shutil.ignore_patterns("mshare-sga"))
    cache = tmp_path / "cache"
    good = build.ensure_binary(src, cache)
    (src / "main.c").write_text((src / "main.c").read_text() + "\nthis is not C;\n")
    with pytest.raises(ToolError) as info:
        build.ensure_binary(src, cache)
    assert "build.log" in str(info.value)
    assert good.exists() and build.source_hash(src) != good.parent.name


def test_kernel_flags_come_only_from_metadata():
    assert build.kernel_flags({"shmem": {}, "hugetlb": {}}) == []
    flags = build.kernel_flags({"mshare-syscall": {"nr_mshare": 451, "nr_mshare_unlink": 452},
                                "msharefs-ioctl": {"abi": "2024"}, "ptshare": {"map_flag": 2097152}})
    assert flags == ["--mshare-syscall-nr", "451,452", "--msharefs-ioctl-abi", "2024",
                     "--ptshare-flag", "0x200000"]
    with pytest.raises(ConfigError):
        build.kernel_flags({"msharefs-ioctl": {"abi": "2023"}})


def test_result_schema_is_checked():
    doc = {"schema": "mshare-lab/result", "version": 1, "outcome": "completed", "mechanism": "shmem",
           "region_bytes": 1, "clients_requested": 1}
    assert WorkloadResult.from_json(json.dumps(doc)).outcome == "completed"
    with pytest.raises(ResultSchemaError):
        WorkloadResult.from_json(json.dumps({**doc, "version": 2}))
    with pytest.raises(ResultSchemaError):
        WorkloadResult.from_json(json.dumps({**doc, "outcome": "fine"}))
    with pytest.raises(ResultSchemaError):
        WorkloadResult.from_json("{not json")
