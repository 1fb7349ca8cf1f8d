"""``mshare-lab compare --format email``: the comparison as kernel engineers post it.

Modelled on mmtests' compare-kernels: the compared kernels (or mechanisms) are columns,
metrics are rows, each non-baseline value carries its change against the baseline and a
``*`` when Welch's t-test gives p < 0.05; then the lab version and the commands that
reproduce the numbers. Plain ASCII-friendly text, every line at most 72 columns, so it
survives a mail client and ``git send-email`` quoting. Groups that do not fit beside the
baseline go in another block that repeats the baseline column.
"""

from __future__ import annotations

import shlex
import textwrap

from ..results.compare import ALPHA, OOM, Comparison, GroupStat
from ..units import format_number, format_size, metric_formatter

WIDTH = 72
LABEL = 16          # metric column
COLUMN = 28         # one group: value, change, significance (two groups beside the labels)


def _value(metric: str, value: float) -> str:
    """Short human units: a column is 18 characters wide."""
    if metric.endswith("_tps"):
        for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= factor:
                return f"{value / factor:.3g}{suffix}/s"
        return f"{format_number(value)}/s"
    if "_bytes" in metric:
        return format_size(value)
    return metric_formatter(metric)(value)


#: short row labels for the default metrics; others print their own name, cut to fit
LABELS = {
    "region_pagetable_bytes": "region pgtables",
    "pagetables_delta_bytes": "pgtables delta",
    "pte_ratio": "pte_ratio",
    OOM: "oom runs",
    "throughput_tps": "throughput",
    "protect_change_us": "protect change",
    "attach_populate_s": "attach+populate",
}


def _cell(row: GroupStat | None) -> str:
    if row is None or (row.mean is None and row.metric != OOM):
        return "-".rjust(COLUMN)
    if row.metric == OOM:
        value = f"{int(sum(row.values))}/{row.n}"
    else:
        value = _value(row.metric, row.mean)
    if row.baseline:
        change = "(base)"
    elif row.change_pct is None:
        change = ""
    else:
        change = f"({row.change_pct:+.1f}%)" if abs(row.change_pct) < 1000 else f"({row.change_pct:+.0f}%)"
    mark = "*" if row.significant else " "
    return f"{value} {change:>10}{mark}".rjust(COLUMN)


def _sd_cell(row: GroupStat | None) -> str:
    if row is None or row.stdev is None or row.metric == OOM:
        return "".rjust(COLUMN)
    return f"± {_value(row.metric, row.stdev)} ".rjust(COLUMN)


def _p_cell(row: GroupStat | None) -> str:
    if row is None or row.baseline or row.p_value is None:
        return "".rjust(COLUMN)
    p = f"{row.p_value:.3f}" if row.p_value >= 1e-3 else f"{row.p_value:.1e}"
    return f"p={p} ".rjust(COLUMN)


def format_email(comparison: Comparison, *, lab_version: str, commands: list[str]) -> str:
    lines: list[str] = []
    for warning in comparison.warnings:
        # first, where a reader sees it before the numbers; wrapped, never cut
        lines += textwrap.wrap(warning.replace("warning: ", "WARNING: ", 1), WIDTH, subsequent_indent="  ")
    if not comparison.rows:
        lines.append("no runs to compare")
    per_block = max(1, (WIDTH - LABEL) // COLUMN)
    for point in dict.fromkeys(row.point for row in comparison.rows):
        rows = [r for r in comparison.rows if r.point == point]
        base = comparison.baselines.get(point)
        groups = list(dict.fromkeys(r.group for r in rows))
        others = [g for g in groups if g != base]
        blocks = [others[i:i + per_block - 1] for i in range(0, len(others), per_block - 1)] or [[]]
        for block in blocks:
            columns = ([base] if base in groups else []) + block
            lines.append("")
            lines.append(point[:WIDTH])
            lines.append(" " * LABEL + "".join(_group_header(g) for g in columns))
            counts = {g: max((r.n for r in rows if r.group == g), default=0) for g in columns}
            lines.append(" " * LABEL + "".join(f"n={counts[g]} ".rjust(COLUMN) for g in columns))
            for metric in dict.fromkeys(r.metric for r in rows):
                cells = {r.group: r for r in rows if r.metric == metric}
                label = LABELS.get(metric, metric)[:LABEL - 1].ljust(LABEL)
                lines.append((label + "".join(_cell(cells.get(g)) for g in columns)).rstrip())
                if any(cells.get(g) is not None and cells[g].stdev is not None and metric != OOM for g in columns):
                    lines.append((" " * LABEL + "".join(_sd_cell(cells.get(g)) for g in columns)).rstrip())
                if any(cells.get(g) is not None and not cells[g].baseline and cells[g].p_value is not None
                       for g in columns):
                    lines.append((" " * LABEL + "".join(_p_cell(cells.get(g)) for g in columns)).rstrip())
    lines.append("")
    lines.append(f"by {comparison.by}; change against the baseline;")
    lines.append(f"* = Welch's t-test p < {ALPHA} (mean ± sample sd)")
    if comparison.excluded:
        lines.append(f"{comparison.excluded} infra-error run(s) left out")
    lines.append("")
    lines.append(f"mshare-lab {lab_version}"[:WIDTH])
    lines.append("To reproduce:")
    # table cells are cut to fit; commands are wrapped, never cut (a cut command is wrong)
    lines = [line[:WIDTH].rstrip() for line in lines]
    for command in commands:
        lines += _wrapped(command)
    return "\n".join(lines).lstrip("\n") + "\n"


def _group_header(group: str) -> str:
    text = group if len(group) < COLUMN else group[:COLUMN - 2] + "~"
    return f"{text} ".rjust(COLUMN)


def _wrapped(command: str) -> list[str]:
    """One shell command as lines of at most 72 columns, continued with backslashes."""
    if len(command) + 2 <= WIDTH:
        return ["  " + command]
    words = shlex.split(command)
    chunks = textwrap.wrap(" ".join(shlex.quote(w) for w in words), width=WIDTH - 8,
                           break_long_words=False, break_on_hyphens=False)
    out = ["  " + chunks[0] + " \\"]
    out += ["      " + c + " \\" for c in chunks[1:-1]]
    if len(chunks) > 1:
        out.append("      " + chunks[-1])
    else:
        out[0] = out[0][:-2]
    return out
