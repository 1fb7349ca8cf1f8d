"""What a report shows, gathered from the results store once.

Everything downstream (figures, page, email, JUnit) reads these dataclasses, never the
store: the SQL stays in ``results.store`` and the report can be built from runs of any
mshare-lab version. Fields a run may lack (older result documents, runs that never
produced one: hangs, panics, infra errors) are ``None`` here, and every consumer treats
``None`` as "not measured".
"""

from __future__ import annotations

import fnmatch
import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, LabError
from ..lab.record import RunRecord
from ..paths import REPO_ROOT
from ..results.location import ResultsLocation
from ..results.store import ResultStore

#: the outcome table's measured columns: (result field, header)
TABLE_METRICS = (
    ("pte_ratio", "PTE ratio"),
    ("sharing_verified", "shared"),
    ("region_pagetable_bytes", "region page tables"),
    ("attach_populate_s", "attach + populate"),
    ("throughput_tps", "throughput"),
    ("protect_change_us", "protection change"),
)


@dataclass(frozen=True)
class KernelInfo:
    name: str
    release: str
    kind: str                       # "distribution" or "built" (or "" when unknown)
    patches: list[str]              # descriptions of the applied patch series
    mechanisms: list[str]           # what the kernel was detected to offer


@dataclass(frozen=True)
class Accelerator:
    domain_type: str                # "kvm" or "qemu" (TCG)
    reason: str
    checked_at: float | None

    @property
    def is_tcg(self) -> bool:
        return self.domain_type != "kvm"


@dataclass
class ReportData:
    results_path: "ResultsLocation | Path"   # .name and str() (a URL is shown redacted)
    runs: list[RunRecord]
    kernels: dict[str, KernelInfo]
    lab_version: str
    host: str
    built_at: float
    accelerator: Accelerator | None
    matrix_files: list[str]                              # the matrix files the runs came from
    not_run: list[str] = field(default_factory=list)     # scenarios of those files with no stored run
    selector: str | None = None
    total_runs: int = 0                                  # in the store, before the selector

    @property
    def measured(self) -> list[RunRecord]:
        """Runs with a workload result document (hangs, panics and infra errors have none)."""
        return [r for r in self.runs if r.result]

    @property
    def outcomes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return counts

    @property
    def only_unsupported(self) -> bool:
        return bool(self.runs) and all(r.outcome == "unsupported" for r in self.runs)


def gather(store: ResultStore, selector: str | None = None) -> ReportData:
    """Every run of the store (or those ``selector`` picks) and what surrounds them."""
    everything = store.runs()
    runs = select(everything, selector)
    kernels = {name: _kernel_info(name, info) for name, info in store.kernels().items()
               if any(r.scenario.kernel == name for r in runs)}
    matrix_files = sorted({_matrix_file(r) for r in runs if _matrix_file(r)})
    return ReportData(
        results_path=store.location, runs=runs, kernels=kernels, lab_version=lab_version(),
        host=socket.gethostname(), built_at=time.time(), accelerator=recorded_accelerator(runs) or accelerator(),
        matrix_files=matrix_files, not_run=_not_run(runs, matrix_files) if selector is None else [],
        selector=selector, total_runs=len(everything))


def select(records: list[RunRecord], selector: str | None) -> list[RunRecord]:
    """``--runs``: comma-separated run ids, scenario ids, point ids or globs over either; ``last:N``."""
    if not selector:
        return list(records)
    if selector.startswith("last:"):
        try:
            count = int(selector[5:])
        except ValueError as exc:
            raise ConfigError(f"--runs {selector}: '{selector[5:]}' is not a number",
                              hint="write last:N, e.g. last:10") from exc
        return records[-count:] if count > 0 else []
    patterns = [p.strip() for p in selector.split(",") if p.strip()]
    return [r for r in records
            if any(fnmatch.fnmatchcase(name, p) for p in patterns
                   for name in (r.run_id or "", r.scenario_id, r.scenario.point_id))]


def metric(record: RunRecord, name: str) -> Any:
    """A result field by dotted name; None when the run has no such field (or no result)."""
    return record.metric(name)


def expectations_text(record: RunRecord) -> str:
    expect = record.scenario.expect or {}
    return ", ".join(f"{k}={'|'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in expect.items())


def phases(record: RunRecord) -> dict[str, float]:
    """When each workload phase began, on the workload time series' clock (newer results only)."""
    marks = ((record.result or {}).get("timeseries") or {}).get("phases")
    if not isinstance(marks, dict):
        return {}
    return {str(k): float(v) for k, v in marks.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def workload_series(record: RunRecord) -> dict[str, list[float]]:
    """The workload's own columns (``t_s``, ``pagetables_bytes``, ``memfree_bytes``, ``oom_kill``)."""
    series = (record.result or {}).get("timeseries") or {}
    times = series.get("t_s")
    if not isinstance(times, list) or not times:
        return {}
    out = {"t_s": [float(t) for t in times]}
    for name in ("pagetables_bytes", "memfree_bytes", "oom_kill"):
        values = series.get(name)
        if isinstance(values, list) and len(values) == len(times):
            out[name] = [float(v) if isinstance(v, (int, float)) else float("nan") for v in values]
    return out


def kernel_log_warnings(record: RunRecord) -> list[str]:
    """Warnings from the run's kernel log summary (``kernel_log``, added by newer runners)."""
    summary = getattr(record, "kernel_log", None)
    if summary is not None and hasattr(summary, "describe"):
        # lab.kernel_log.KernelLog: one line of counts per kind, and the crash's title
        if getattr(summary, "clean", True) or getattr(summary, "source", "") == "none":
            return []
        title = getattr(summary, "crash_title", None)
        return [summary.describe()] + ([title] if title else [])
    if summary is None:
        summary = (record.result or {}).get("kernel_log")
    if not isinstance(summary, dict):
        return []
    out: list[str] = []
    for key in ("warnings", "findings", "problems", "lines"):
        items = summary.get(key)
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict):
                    text = item.get("summary") or item.get("line") or item.get("kind") or json.dumps(item, sort_keys=True)
                else:
                    text = str(item)
                out.append(str(text))
            break
    return out


def protect_effective(record: RunRecord) -> str:
    """Did every client end up with the new protection, both ways (newer workloads only)?"""
    parts = []
    for name, label in (("protect_effective", "read-only"), ("protect_back_effective", "back")):
        value = record.metric(name)
        if isinstance(value, dict) and isinstance(value.get("asked"), int):
            held = value.get("held", value.get("acked"))
            parts.append(f"{label} {held}/{value['asked']}")
        elif isinstance(value, bool):
            parts.append(f"{label} {'yes' if value else 'no'}")
    return ", ".join(parts)


def lab_version() -> str:
    """``0.1.0`` plus the commit when running from a git checkout (``0.1.0 (git 1a2b3c4)``)."""
    try:
        proc = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return __version__
    commit = proc.stdout.strip()
    return f"{__version__} (git {commit})" if proc.returncode == 0 and commit else __version__


def recorded_accelerator(runs: list[RunRecord]) -> Accelerator | None:
    """What the runs' host records say (kvm only when every run had it), None for old runs."""
    seen: dict[tuple[str, str], int] = {}
    for record in runs:
        host = record.host or {}
        if host.get("accelerator"):
            key = (str(host.get("name") or "?"), str(host["accelerator"]))
            seen[key] = seen.get(key, 0) + 1
    if not seen:
        return None
    kinds = {accel for _, accel in seen}
    reason = "as the runs recorded it: " + ", ".join(f"{name} {accel} ({n} run(s))"
                                                      for (name, accel), n in sorted(seen.items()))
    return Accelerator("kvm" if kinds == {"kvm"} else "qemu", reason, None)


def accelerator() -> Accelerator | None:
    """This host's KVM probe verdict (for runs stored before runs recorded their host)."""
    from ..guest.libvirt_driver import default_uri
    from ..guest.probe import cache_path
    try:
        data = json.loads(cache_path().read_text())
        if "domain_type" not in data:
            # one verdict per host URI since the lab has several hosts: this host's
            data = data[default_uri()]
        return Accelerator(str(data["domain_type"]), str(data.get("reason", "")), data.get("checked_at"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _kernel_info(name: str, info: dict[str, Any]) -> KernelInfo:
    meta = info.get("metadata") or {}
    patches = meta.get("patches") or []
    mechanisms = meta.get("mechanisms") or {}
    return KernelInfo(
        name=name, release=str(info.get("release") or meta.get("release") or "?"),
        kind=str(meta.get("kind") or ""),
        patches=[p if isinstance(p, str) else json.dumps(p, sort_keys=True) for p in patches],
        mechanisms=sorted(mechanisms) if isinstance(mechanisms, dict) else [str(m) for m in mechanisms])


def _matrix_file(record: RunRecord) -> str | None:
    source = record.scenario.source
    if not source:
        return None
    return source.rsplit(":", 1)[0] if source.rsplit(":", 1)[-1].isdigit() else source


def _not_run(runs: list[RunRecord], matrix_files: list[str]) -> list[str]:
    """Scenarios a matrix file declares with no stored run: an interrupted (or running) matrix."""
    from ..lab.matrix import load
    stored = {r.scenario_id for r in runs}
    missing: list[str] = []
    for name in matrix_files:
        path = Path(name)
        if not path.exists() and not path.is_absolute():
            path = REPO_ROOT / path     # the shipped matrices, run from the checkout
        try:
            matrix = load(path)
        except (LabError, OSError):
            continue    # the file moved or no longer parses: it cannot say what is missing
        missing += [s.scenario_id for s in matrix.scenarios if s.scenario_id not in stored]
    return missing
