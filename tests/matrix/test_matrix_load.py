"""The matrix file: expansion into scenarios, and an error with file:line for every mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError
from mshare_lab.lab import matrix
from mshare_lab.options import WORKLOAD_OPTIONS
from mshare_lab.paths import REPO_ROOT

EXAMPLE = """\
defaults: {duration: 2, populate: 1.0, timeout: 300, ram: 4G, vcpus: 2, image: micro}
matrix:
  - name: shmem-growth
    kernels: [debian-6.1]
    mechanisms: [shmem, sysv]
    sga: [256M]
    clients: [100, 200]
    ram: [4G]
    repeats: 3
    expect: {outcome: completed, pte_ratio_min: 0.9, pte_ratio_max: 1.3}
  - kernels: debian-6.1
    mechanisms: hugetlb
    sga: 1G
    clients: 100
    ram: 2G
    expect: {sharing_verified: true, pte_ratio_max: 0.05}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "matrix.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        matrix.load(path)
    assert info.value.location is not None and Path(info.value.location.path) == path
    return info.value


def test_expansion_count_order_and_ids(tmp_path):
    loaded = matrix.load(write(tmp_path, EXAMPLE))
    ids = [s.scenario_id for s in loaded.scenarios]
    # 2 mechanisms x 2 client counts x 3 repeats, then the single hugetlb point
    assert len(ids) == 13
    assert ids[:4] == ["debian-6.1/shmem/256M/x100/ram4G#1", "debian-6.1/shmem/256M/x100/ram4G#2",
                       "debian-6.1/shmem/256M/x100/ram4G#3", "debian-6.1/shmem/256M/x200/ram4G#1"]
    assert ids[-1] == "debian-6.1/hugetlb/1G/x100/ram2G#1"
    assert len(set(ids)) == 13


def test_defaults_and_values_reach_the_scenario(tmp_path):
    loaded = matrix.load(write(tmp_path, EXAMPLE))
    first, last = loaded.scenarios[0], loaded.scenarios[-1]
    assert first.workload.duration == 2.0 and first.workload.sga == 256 << 20
    assert first.guest.timeout == 300.0 and first.guest.memory == 4 << 30 and first.guest.vcpus == 2
    assert last.guest.memory == 2 << 30                  # the entry overrides the default
    assert first.expect == {"outcome": ["completed"], "pte_ratio_min": 0.9, "pte_ratio_max": 1.3}
    assert last.expect == {"sharing_verified": True, "pte_ratio_max": 0.05}
    assert first.source == f"{loaded.path}:3" and last.source == f"{loaded.path}:11"
    assert loaded.names[first.scenario_id] == "shmem-growth"
    assert loaded.defaults["ram"] == 4 << 30 and loaded.defaults["duration"] == 2.0


def test_every_workload_option_is_accepted_in_a_matrix(tmp_path):
    # one declaration per option: anything the CLI takes, the file takes too
    keys = {o.key for o in WORKLOAD_OPTIONS} - {"mechanism"}
    assert keys <= set(matrix.ENTRY_KEYS)
    loaded = matrix.load(write(tmp_path, """\
        matrix:
          - {kernels: k, mechanisms: shmem, sga: 64M, clients: 5, memory_limit: 512M, write_share: 0.5,
             populate: 0.5, duration: 1, hugepage_backing: true, vcpus: 1, timeout: 60}
        """))
    (s,) = loaded.scenarios
    assert s.workload.memory_limit == 512 << 20 and s.workload.write_share == 0.5
    assert s.guest.hugepage_backing is True and s.guest.vcpus == 1


def test_malformed_yaml_names_the_line(tmp_path):
    err = error_of(tmp_path, """\
        matrix:
          - kernels: [debian-6.1
            sga: 1G
        """)
    assert err.location.line == 3          # where YAML noticed; the message names line 2 too
    assert "malformed YAML" in str(err) and "line 2" in str(err)


def test_unknown_key_has_line_and_suggestion(tmp_path):
    err = error_of(tmp_path, """\
        matrix:
          - kernels: debian-6.1
            mechanisms: shmem
            sga: 256M
            client: 100
        """)
    assert err.location.line == 5
    assert "unknown key in a matrix entry 'client'" in str(err) and err.hint == "did you mean 'clients'?"


def test_unknown_top_level_and_defaults_keys(tmp_path):
    assert error_of(tmp_path, "matrx:\n  - {}\n").location.line == 1
    err = error_of(tmp_path, "defaults:\n  duration: 2\n  rma: 4G\nmatrix: []\n")
    assert err.location.line == 3 and "did you mean 'ram'" in str(err)


def test_bad_size_names_key_and_list_item_line(tmp_path):
    err = error_of(tmp_path, """\
        matrix:
          - kernels: debian-6.1
            mechanisms: shmem
            sga:
              - 256M
              - 12Q
            clients: 1
        """)
    assert err.location.line == 6 and "sga:" in str(err) and "'12Q' is not a size" in str(err)


def test_wrong_types(tmp_path):
    err = error_of(tmp_path, """\
        matrix:
          - kernels: debian-6.1
            mechanisms: shmem
            sga: 1G
            clients: lots
        """)
    assert err.location.line == 5 and "clients: 'lots' is not a whole number" in str(err)
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    mechanisms: shmem\n    sga: {a: 1}\n")
    assert err.location.line == 4 and "not a mapping" in str(err)
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    repeats: two\n")
    assert err.location.line == 3 and "repeats" in str(err)
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    image: windows\n")
    assert err.location.line == 3 and "micro or debian" in str(err)


def test_unknown_mechanism_suggests(tmp_path):
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    mechanisms: [shmem, hugtlb]\n    sga: 1G\n")
    assert err.location.line == 3 and "unknown mechanism 'hugtlb'" in str(err)
    assert err.hint.startswith("did you mean 'hugetlb'?")


def test_expectations_are_validated_at_load(tmp_path):
    base = "matrix:\n  - kernels: k\n    mechanisms: shmem\n    sga: 1G\n    clients: 1\n    expect:\n"
    err = error_of(tmp_path, base + "      outcome: completed\n      pte_ration_max: 1.2\n")
    assert err.location.line == 8 and "did you mean 'pte_ratio_max'" in str(err)
    err = error_of(tmp_path, base + "      outcome: complete\n")
    assert err.location.line == 7 and "did you mean 'completed'" in str(err)
    err = error_of(tmp_path, base + "      pte_ratio_max: high\n")
    assert err.location.line == 7 and "not a number" in str(err)
    err = error_of(tmp_path, base + "      latency_us.p99_max: 500\n      pagetables_delta_bytes_max: 64M\n"
                   "      sharing_verified: yes please\n")
    assert err.location.line == 9 and "true or false" in str(err)


def test_empty_inputs(tmp_path):
    assert "empty" in str(error_of(tmp_path, ""))
    err = error_of(tmp_path, "defaults: {ram: 1G}\nmatrix: []\n")
    assert err.location.line == 2 and "non-empty list" in str(err)
    err = error_of(tmp_path, "defaults: {ram: 1G}\n")
    assert "no 'matrix:'" in str(err)
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    mechanisms: shmem\n    sga: []\n")
    assert err.location.line == 4 and "empty" in str(err)


def test_missing_dimension_names_the_entry(tmp_path):
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    sga: 1G\n    clients: 3\n")
    assert err.location.line == 2 and "no 'mechanisms'" in str(err)


def test_duplicate_ids_name_both_lines(tmp_path):
    err = error_of(tmp_path, """\
        defaults: {kernels: debian-6.1, clients: 10}
        matrix:
          - mechanisms: shmem
            sga: 1G
          - mechanisms: [sysv, shmem]
            sga: 1024M
        """)
    assert err.location.line == 5
    assert "debian-6.1/shmem/1G/x10/ram4G#1" in str(err)
    assert f"{err.location.path}:3" in str(err) and f"{err.location.path}:5" in str(err)


def test_duplicate_yaml_key_is_an_error(tmp_path):
    err = error_of(tmp_path, "matrix:\n  - kernels: k\n    sga: 1G\n    sga: 2G\n")
    assert err.location.line == 4 and "first on line 3" in str(err)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        matrix.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name", ["default.yaml", "ci.yaml"])
def test_shipped_examples_load(name):
    loaded = matrix.load(REPO_ROOT / "examples" / name)
    assert loaded.scenarios and all(s.expect for s in loaded.scenarios)
