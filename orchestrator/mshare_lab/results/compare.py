"""Kernels or mechanisms side by side, with the statistics repeats allow.

Runs are grouped by one axis (``kernel`` or ``mechanism``) while every other dimension of
the scenario (the other axis, region size, clients, guest RAM, image) is held equal: each
such combination is a *point*, and groups are only compared within a point. Per group
and metric: mean ± sample standard deviation, and against the baseline group (the first
one seen, or the one named) the relative change and Welch's t-test p-value
(``scipy.stats.ttest_ind(equal_var=False)``: repeats of a VM benchmark do not have equal
variances across kernels). Runs that ended in ``infra-error`` say nothing about a kernel
and are left out.

Runs from different hosts are not compared blindly: when the compared runs mix
accelerators (KVM and TCG) or host CPU models, the comparison carries a warning naming
them (``Comparison.warnings``), shown by the table, the email and the report. Runs without
a host record (stored before the lab had hosts) count as unknown and never warn alone.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable

from ..errors import ConfigError, NotFoundError
from ..lab.expectations import METRICS, metric_value
from ..lab.record import RunRecord
from ..units import metric_formatter, short_size

AXES = ("kernel", "mechanism")
OOM = "oom"      # pseudo-metric: the share of runs that ended in an OOM
DEFAULT_METRICS = ("region_pagetable_bytes", "pagetables_delta_bytes", "pte_ratio", OOM,
                   "throughput_tps", "protect_change_us", "attach_populate_s")
ALPHA = 0.05
NOT_A_RESULT = ("infra-error",)


@dataclass
class GroupStat:
    """One metric of one group (a kernel or a mechanism) at one point."""

    point: str
    group: str
    metric: str
    values: list[float]
    baseline: bool = False
    change_pct: float | None = None
    p_value: float | None = None
    note: str = ""

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def stdev(self) -> float | None:
        return statistics.stdev(self.values) if self.n >= 2 else None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


@dataclass
class Comparison:
    by: str
    rows: list[GroupStat] = field(default_factory=list)
    baselines: dict[str, str] = field(default_factory=dict)   # point -> baseline group
    excluded: int = 0                                         # infra-error runs left out
    warnings: list[str] = field(default_factory=list)         # e.g. the runs mix KVM and TCG

    def row(self, point: str, group: str, metric: str) -> GroupStat:
        for r in self.rows:
            if (r.point, r.group, r.metric) == (point, group, metric):
                return r
        raise KeyError((point, group, metric))


def welch_p(sample: list[float], baseline: list[float]) -> tuple[float | None, str]:
    """Welch's t-test p-value of a sample against the baseline, or None with the reason."""
    if len(sample) < 2 or len(baseline) < 2:
        return None, "n<2, no test"
    if statistics.pvariance(sample) == 0 and statistics.pvariance(baseline) == 0:
        # both samples constant: the t statistic is undefined
        return None, "no variance, no test"
    # imported here: scipy takes seconds to load and every CLI start imports this module
    import warnings

    from scipy import stats
    with warnings.catch_warnings(record=True) as caught:
        # scipy warns (on stderr, mid-table) when the samples are nearly identical: say it in the row
        warnings.simplefilter("always", RuntimeWarning)
        p = float(stats.ttest_ind(sample, baseline, equal_var=False).pvalue)
    if math.isnan(p):
        return None, "no variance, no test"
    if any(issubclass(w.category, RuntimeWarning) for w in caught):
        return p, "nearly identical samples: p imprecise"
    return p, ""


def compare(records: Iterable[RunRecord], *, by: str = "kernel", baseline: str | None = None,
            metrics: Iterable[str] | None = None) -> Comparison:
    if by not in AXES:
        raise ConfigError(f"cannot compare by '{by}'", hint=f"use --by {' or --by '.join(AXES)}")
    metrics = tuple(metrics or DEFAULT_METRICS)
    for metric in metrics:
        if metric != OOM and metric not in METRICS:
            raise ConfigError(f"unknown metric '{metric}'", hint=f"choose from {OOM}, {', '.join(METRICS)}")
    comparison = Comparison(by=by)
    points: dict[str, dict[str, list[RunRecord]]] = {}
    groups_seen: list[str] = []
    records = list(records)
    comparison.warnings = host_warnings(r for r in records if r.outcome not in NOT_A_RESULT)
    for record in records:
        if record.outcome in NOT_A_RESULT:
            comparison.excluded += 1
            continue
        group = _group_of(record, by)
        if group not in groups_seen:
            groups_seen.append(group)
        points.setdefault(point_label(record, by), {}).setdefault(group, []).append(record)
    if baseline is not None and baseline not in groups_seen:
        raise NotFoundError(f"baseline {by} '{baseline}' has no runs",
                            hint=f"{by}s with runs: {', '.join(groups_seen) or 'none'}")
    for point, groups in points.items():
        base = baseline or next(g for g in groups_seen if g in groups)
        comparison.baselines[point] = base
        ordered = sorted(groups, key=groups_seen.index)
        for metric in metrics:
            if not any(_values(groups[g], metric) for g in ordered):
                continue    # nobody measured it here (e.g. throughput of runs that all OOMed)
            base_values = _values(groups.get(base, []), metric)
            for group in ordered:
                row = GroupStat(point, group, metric, _values(groups[group], metric), baseline=(group == base))
                _against(row, base_values, base in groups)
                comparison.rows.append(row)
    return comparison


#: host record fields that make numbers incomparable when they differ, as people name them
HOST_FIELDS = (("accelerator", "accelerators"), ("cpu_model", "host CPU models"))


def host_warnings(records: Iterable[RunRecord]) -> list[str]:
    """One line per host field the runs disagree on, naming each value and its run count."""
    records = list(records)
    warnings = []
    for key, label in HOST_FIELDS:
        counts: dict[str, int] = {}
        for record in records:
            value = (record.host or {}).get(key)
            if value:
                counts[str(value)] = counts.get(str(value), 0) + 1
        if len(counts) > 1:
            unknown = sum(1 for r in records if not (r.host or {}).get(key))
            named = ", ".join(f"{value} ({n} run{'s' if n > 1 else ''})" for value, n in counts.items())
            warnings.append(f"warning: the compared runs mix {label}: {named}"
                            + (f", unknown ({unknown})" if unknown else "")
                            + "; times and throughput are not comparable across them")
    return warnings


def _against(row: GroupStat, base_values: list[float], has_baseline: bool) -> None:
    if row.baseline:
        row.note = "baseline"
        return
    if not has_baseline:
        row.note = "no baseline runs at this point"
        return
    if not row.values:
        return
    if not base_values:
        row.note = "the baseline has no value"     # e.g. every baseline run hung
        return
    base_mean = statistics.fmean(base_values)
    if base_mean != 0:
        row.change_pct = (row.mean - base_mean) / abs(base_mean) * 100.0
    if row.metric == OOM:
        return          # a share of runs, not a measurement: shown as k/n without a test
    row.p_value, row.note = welch_p(row.values, base_values)


def _values(records: list[RunRecord], metric: str) -> list[float]:
    if metric == OOM:
        return [1.0 if r.outcome == "oom" else 0.0 for r in records]
    values = (metric_value(r, metric) for r in records)
    return [float(v) for v in values if v is not None]


def _group_of(record: RunRecord, by: str) -> str:
    return record.scenario.kernel if by == "kernel" else record.scenario.workload.mechanism


def point_label(record: RunRecord, by: str) -> str:
    """The scenario dimensions held equal while comparing ``by`` (the id without that axis)."""
    s = record.scenario
    other = s.workload.mechanism if by == "kernel" else s.kernel
    image = "" if s.guest.image == "micro" else f"/{s.guest.image}"
    return f"{other}/{short_size(s.workload.sga)}/x{s.workload.clients}/ram{short_size(s.guest.memory)}{image}"


# --- the table ---------------------------------------------------------------------------

def format_table(comparison: Comparison) -> str:
    if not comparison.rows:
        return "\n".join([*comparison.warnings, "no runs to compare"]) + _excluded(comparison)
    header = ("point", comparison.by, "metric", "n", "mean ± sd", "change", "p", "")
    lines = [header]
    previous_point = None
    for row in comparison.rows:
        point = row.point if row.point != previous_point else ""
        previous_point = row.point
        cells = row_cells(row)
        note = " ".join(x for x in (cells["significant"], cells["note"]) if x)
        lines.append((point, row.group, row.metric, str(row.n), cells["value"], cells["change"], cells["p"], note))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    legend = f"grouped by {comparison.by}; change and Welch's t-test p against the baseline; * = p < {ALPHA}"
    return "\n".join([*comparison.warnings, legend, *text]) + _excluded(comparison)


def row_cells(row: GroupStat) -> dict[str, str]:
    """A row's cells as people read them (the terminal table and the report share these)."""
    show = metric_formatter(row.metric)
    if row.metric == OOM:
        value = f"{int(sum(row.values))}/{row.n} runs"
    elif row.mean is None:
        value = "-"
    elif row.stdev is None:
        value = show(row.mean)
    else:
        value = f"{show(row.mean)} ± {show(row.stdev)}"
    return {
        "value": value,
        "change": "baseline" if row.baseline else ("" if row.change_pct is None else f"{row.change_pct:+.1f}%"),
        "p": "" if row.p_value is None else (f"{row.p_value:.4f}" if row.p_value >= 1e-4 else f"{row.p_value:.1e}"),
        "significant": "*" if row.significant else "",
        "note": "" if row.baseline else row.note,
    }


def _excluded(comparison: Comparison) -> str:
    return f"\n({comparison.excluded} infra-error runs left out)" if comparison.excluded else ""
