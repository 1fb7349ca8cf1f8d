"""The HTML lab report: one self-contained file (figures as data URIs, CSS inline, no script).

The view model here turns the gathered runs into display strings with human units; the
Jinja2 template (``templates/report.html.j2``, autoescaped) only lays them out. Table
cells carry the stored value in ``data-value`` so what the page shows can be checked
against the store, and so can be copied exactly.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from ..lab.record import RunRecord
from ..results import compare as compare_mod
from ..units import format_metric, format_seconds
from . import data, figures

TEMPLATE = "report.html.j2"


@dataclass(frozen=True)
class Cell:
    text: str
    value: str = ""             # the stored value, exactly (repr of the number), for data-value
    metric: str = ""


@dataclass
class Row:
    run_id: str
    scenario_id: str
    outcome: str
    reason: str
    expect: str
    expect_met: bool | None            # None: the scenario expected nothing
    failures: list[str]
    cells: list[Cell]
    warnings: list[str]
    protect_effective: str
    console_href: str
    console_label: str


@dataclass
class Page:
    title: str
    notes: list[str] = field(default_factory=list)
    header: list[tuple[str, str]] = field(default_factory=list)
    kernels: list[data.KernelInfo] = field(default_factory=list)
    tcg_warning: str = ""
    columns: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    show_protect_effective: bool = False
    show_warnings: bool = False
    figures: list[figures.Figure] = field(default_factory=list)
    comparison_rows: list[dict[str, str]] = field(default_factory=list)
    comparison_by: str = ""
    comparison_excluded: int = 0
    comparison_warnings: list[str] = field(default_factory=list)   # the runs mix accelerators or CPUs
    not_run: list[str] = field(default_factory=list)


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("mshare_lab.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def default_axis(report: data.ReportData) -> str:
    """Compare kernels when there are several, else mechanisms."""
    return "kernel" if len({r.scenario.kernel for r in report.runs}) > 1 else "mechanism"


def build(report: data.ReportData, *, out_dir: Path, by: str | None = None, baseline: str | None = None) -> Page:
    page = Page(title=f"mshare-lab report: {report.results_path.name}")
    page.notes = _notes(report)
    page.header = _header(report)
    page.kernels = list(report.kernels.values())
    if report.accelerator and report.accelerator.is_tcg:
        page.tcg_warning = ("Guests ran under QEMU software emulation (TCG), not KVM: times and throughput are "
                            "those of an emulated CPU, many times slower than hardware; page-table bytes "
                            "are unaffected.")
    page.columns = [header for _, header in data.TABLE_METRICS]
    page.rows = [_row(r, out_dir) for r in report.runs]
    page.show_protect_effective = any(row.protect_effective for row in page.rows)
    page.show_warnings = any(row.warnings for row in page.rows)
    page.not_run = report.not_run
    axis = by or default_axis(report)
    comparison = compare_mod.compare(report.runs, by=axis, baseline=baseline)
    page.comparison_by, page.comparison_excluded = axis, comparison.excluded
    page.comparison_warnings = [_sentence(w.removeprefix("warning: ")) for w in comparison.warnings]
    page.comparison_rows = [_comparison_row(row) for row in comparison.rows]
    page.figures = [figures.theory(report.runs), figures.timelines(report.runs), figures.comparison(comparison),
                    figures.oom_map(report.runs), figures.protection(report.runs)]
    return page


def render(page: Page) -> str:
    return environment().get_template(TEMPLATE).render(page=page)


def write(report: data.ReportData, out: Path, *, by: str | None = None, baseline: str | None = None) -> Path:
    """Build and write the report; written beside and renamed, so a failure leaves no half page."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    html = render(build(report, out_dir=out.parent.resolve(), by=by, baseline=baseline))
    partial = out.with_name(out.name + ".partial")
    try:
        partial.write_text(html, encoding="utf-8")
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    return out


# --- pieces -----------------------------------------------------------------------------

def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _notes(report: data.ReportData) -> list[str]:
    notes = []
    if report.total_runs == 0:
        notes.append(f"The results store {report.results_path} holds no runs: nothing has been run into it yet, "
                     "or the only run was interrupted before its first scenario finished.")
    elif not report.runs:
        notes.append(f"No run matches --runs {report.selector} ({report.total_runs} run(s) in the store).")
    if report.not_run:
        notes.append(f"{len(report.not_run)} scenario(s) of {', '.join(report.matrix_files)} have no stored run: "
                     "the matrix run was interrupted (or is still going); the report shows the runs that finished.")
    if report.only_unsupported:
        notes.append("Every run ended 'unsupported': the kernel(s) lack the mechanism(s) asked for, so nothing "
                     "was measured. The outcome table gives each probe's reason.")
    elif report.runs and not report.measured:
        notes.append("No run produced a workload result (hangs, panics or infra errors only): the figures are empty.")
    return notes


def _header(report: data.ReportData) -> list[tuple[str, str]]:
    started = [r.started_at for r in report.runs if r.started_at]
    finished = [r.finished_at for r in report.runs if r.finished_at]
    when = (f"{_utc(min(started))} to {_utc(max(finished or started))}" if started else "no runs")
    accel = report.accelerator
    accel_text = ("unknown (no KVM probe verdict on this host)" if accel is None else
                  f"{'kvm' if not accel.is_tcg else 'tcg (QEMU software emulation)'}: {accel.reason}"
                  + (f" (probed {_utc(accel.checked_at)})" if accel.checked_at else ""))
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.outcomes.items())) or "none"
    return [
        ("runs", when),
        ("outcomes", f"{len(report.runs)} run(s): {counts}"),
        ("host", f"{report.host} (report built {_utc(report.built_at)})"),
        ("lab version", f"mshare-lab {report.lab_version}"),
        ("guest accelerator", accel_text),
        ("matrix", ", ".join(report.matrix_files) or "command line / unknown"),
        ("results", str(report.results_path) + (f" (--runs {report.selector})" if report.selector else "")),
        ("guest time", format_seconds(sum(r.guest_seconds for r in report.runs))),
    ]


def _row(record: RunRecord, out_dir: Path) -> Row:
    cells = []
    for name, _ in data.TABLE_METRICS:
        value = record.metric(name)
        if isinstance(value, bool):
            cells.append(Cell("yes" if value else "no", json.dumps(value), name))
        elif isinstance(value, (int, float)):
            cells.append(Cell(format_metric(name, value), repr(value), name))
        else:
            cells.append(Cell("-", "", name))
    expect = data.expectations_text(record)
    href, label = _console_link(record, out_dir)
    return Row(run_id=record.run_id or "", scenario_id=record.scenario_id, outcome=record.outcome,
               reason=record.reason or "", expect=expect,
               expect_met=(not record.expectation_failures) if expect else None,
               failures=list(record.expectation_failures), cells=cells,
               warnings=data.kernel_log_warnings(record),
               protect_effective=data.protect_effective(record),
               console_href=href, console_label=label)


def _console_link(record: RunRecord, out_dir: Path) -> tuple[str, str]:
    if not record.console_log:
        return "", ""
    path = Path(record.console_log)
    if not path.exists():
        return "", "console log (removed)"
    # relative when the report sits near the logs, so the pair can be moved together
    try:
        href = os.path.relpath(path.resolve(), out_dir)
    except ValueError:
        href = path.resolve().as_uri()
    return href, "console"


def _comparison_row(row: compare_mod.GroupStat) -> dict[str, str]:
    return {"point": row.point, "group": row.group, "metric": row.metric, "n": str(row.n),
            "mean": "" if row.mean is None else repr(row.mean), **compare_mod.row_cells(row)}


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
