"""compare: groups at equal points, Welch's t-test against the baseline, n=1 and OOM shares."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from mshare_lab.errors import ConfigError, NotFoundError
from mshare_lab.results.compare import compare, format_table, welch_p

STOCK = [1.02, 1.05, 1.04, 1.07, 1.03]           # pte_ratio of five repeats on a stock kernel
SHARED = [0.012, 0.015, 0.011, 0.014, 0.013]     # and with page tables shared


def runs(record_factory, kernel, values, metric="pte_ratio", **dims):
    return [record_factory(kernel=kernel, repeat=i + 1, **dims, **{metric: v}) for i, v in enumerate(values)]


def test_welch_p_matches_scipy_for_known_samples():
    a, b = [10.1, 9.8, 10.4, 10.0, 9.9, 10.2], [11.0, 11.6, 10.7, 11.9]
    p, note = welch_p(b, a)
    assert note == ""
    assert p == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue, rel=1e-12)
    # and the Welch-Satterthwaite formula worked through by hand: t = 4.287, df = 3.63
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(b) - statistics.fmean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert (round(t, 3), round(df, 2)) == (4.287, 3.63)
    assert p == pytest.approx(2 * stats.t.sf(t, df), rel=1e-9) == pytest.approx(0.01572, abs=1e-5)


def test_clear_difference_is_significant_and_equal_samples_are_not(record_factory):
    records = runs(record_factory, "debian-6.1", STOCK) + runs(record_factory, "mshare-v3", SHARED) \
        + runs(record_factory, "debian-6.13", STOCK)
    comparison = compare(records, by="kernel", metrics=["pte_ratio"])
    point = "shmem/256M/x100/ram4G"
    base = comparison.row(point, "debian-6.1", "pte_ratio")
    shared = comparison.row(point, "mshare-v3", "pte_ratio")
    same = comparison.row(point, "debian-6.13", "pte_ratio")
    assert base.baseline and base.p_value is None and base.n == 5
    assert shared.significant and shared.p_value == pytest.approx(
        stats.ttest_ind(SHARED, STOCK, equal_var=False).pvalue)
    assert shared.change_pct == pytest.approx((sum(SHARED) / 5 - sum(STOCK) / 5) / (sum(STOCK) / 5) * 100)
    assert same.p_value == pytest.approx(1.0) and not same.significant and same.change_pct == pytest.approx(0)
    assert shared.stdev == pytest.approx(stats.tstd(SHARED))


def test_n1_groups_show_the_value_without_a_test(record_factory):
    records = runs(record_factory, "debian-6.1", STOCK) + runs(record_factory, "mshare-v3", [0.02])
    row = compare(records, metrics=["pte_ratio"]).row("shmem/256M/x100/ram4G", "mshare-v3", "pte_ratio")
    assert row.n == 1 and row.p_value is None and row.note == "n<2, no test" and row.mean == 0.02
    assert row.change_pct == pytest.approx((0.02 - 1.042) / 1.042 * 100)
    table = format_table(compare(records, metrics=["pte_ratio"]))
    assert "n<2, no test" in table


def test_baseline_without_values_is_said(record_factory):
    records = [record_factory(kernel="a", outcome="guest-hang", reason="timeout")] + runs(record_factory, "b", [1.0, 1.1])
    row = compare(records, metrics=["pte_ratio"]).row("shmem/256M/x100/ram4G", "b", "pte_ratio")
    assert row.p_value is None and row.change_pct is None and row.note == "the baseline has no value"


def test_constant_samples_are_not_tested(record_factory):
    records = runs(record_factory, "a", [2.0, 2.0]) + runs(record_factory, "b", [2.0, 2.0])
    row = compare(records, metrics=["pte_ratio"]).row("shmem/256M/x100/ram4G", "b", "pte_ratio")
    assert row.p_value is None and row.note == "no variance, no test" and not row.significant


def test_groups_only_meet_at_equal_points(record_factory):
    records = (runs(record_factory, "a", STOCK) + runs(record_factory, "b", SHARED)
               + runs(record_factory, "a", [2.0, 2.1], clients=200)
               + runs(record_factory, "b", [2.0, 2.2], clients=200, ram=2 << 30))
    comparison = compare(records, metrics=["pte_ratio"])
    assert comparison.baselines == {"shmem/256M/x100/ram4G": "a", "shmem/256M/x200/ram4G": "a",
                                     "shmem/256M/x200/ram2G": "b"}
    x200 = [r for r in comparison.rows if r.point == "shmem/256M/x200/ram4G"]
    assert [(r.group, r.n) for r in x200] == [("a", 2)]


def test_by_mechanism_and_named_baseline(record_factory):
    records = (runs(record_factory, "debian-6.1", [5.6e7, 5.7e7, 5.5e7], metric="region_pagetable_bytes")
               + [record_factory(mechanism="hugetlb", repeat=i + 1, region_pagetable_bytes=v)
                  for i, v in enumerate([1.1e5, 1.2e5, 1.0e5])])
    comparison = compare(records, by="mechanism", baseline="hugetlb", metrics=["region_pagetable_bytes"])
    shmem = comparison.row("debian-6.1/256M/x100/ram4G", "shmem", "region_pagetable_bytes")
    assert comparison.baselines["debian-6.1/256M/x100/ram4G"] == "hugetlb"
    assert shmem.significant and shmem.change_pct > 10000
    with pytest.raises(NotFoundError, match="baseline mechanism 'ptshare' has no runs"):
        compare(records, by="mechanism", baseline="ptshare")
    with pytest.raises(ConfigError):
        compare(records, by="ram")
    with pytest.raises(ConfigError, match="unknown metric 'pte_ration'"):
        compare(records, metrics=["pte_ration"])


def test_oom_share_and_infra_errors(record_factory):
    records = [record_factory(kernel="stock", repeat=1, outcome="oom"),
               record_factory(kernel="stock", repeat=2, outcome="oom"),
               record_factory(kernel="stock", repeat=3, pte_ratio=1.0),
               record_factory(kernel="shared", repeat=1, pte_ratio=0.01),
               record_factory(kernel="shared", repeat=2, pte_ratio=0.01),
               record_factory(kernel="shared", repeat=3, outcome="infra-error", reason="libvirt died")]
    comparison = compare(records, metrics=["oom", "pte_ratio"])
    stock = comparison.row("shmem/256M/x100/ram4G", "stock", "oom")
    shared = comparison.row("shmem/256M/x100/ram4G", "shared", "oom")
    assert (sum(stock.values), stock.n) == (2, 3) and (sum(shared.values), shared.n) == (0, 2)
    assert shared.p_value is None and comparison.excluded == 1
    table = format_table(comparison)
    assert "2/3 runs" in table and "0/2 runs" in table and "1 infra-error runs left out" in table


def test_table_is_aligned(record_factory):
    records = runs(record_factory, "debian-6.1", STOCK) + runs(record_factory, "mshare-v3", SHARED)
    lines = format_table(compare(records, metrics=["pte_ratio"])).splitlines()
    header, base, other = lines[1], lines[2], lines[3]
    assert header.split() == ["point", "kernel", "metric", "n", "mean", "±", "sd", "change", "p"]
    for column in ("kernel", "metric", "change"):
        at = header.index(column)
        assert base[at - 1] == " " and other[at - 1] == " " and other[at] != " "
    assert "baseline" in base and other.rstrip().endswith("*") and "-98.8%" in other
