"""Export stored runs: CSV for spreadsheets (one row per run, one column per metric) and
JSON for programs (the full record: scenario, result document, metrics, time series)."""

from __future__ import annotations

import csv
import dataclasses
import json
from typing import Any, Iterable, TextIO

from ..lab.record import RunRecord
from .store import flatten_metrics
from . import series as series_mod

JSON_SCHEMA = "mshare-lab/results"
JSON_VERSION = 1

#: the run columns of the CSV, before the metric columns
RUN_COLUMNS = ("run_id", "scenario_id", "point_id", "kernel", "mechanism", "sga", "clients", "ram",
               "vcpus", "image", "repeat", "outcome", "reason", "started_at", "finished_at",
               "guest_seconds", "wall_seconds", "overhead_seconds", "attempts", "expectation_failures",
               "console_log", "artifacts_dir", "source")


def run_fields(record: RunRecord) -> dict[str, Any]:
    """The flat description of one run (the CSV's first columns)."""
    s = record.scenario
    return {
        "run_id": record.run_id, "scenario_id": s.scenario_id, "point_id": s.point_id,
        "kernel": s.kernel, "mechanism": s.workload.mechanism, "sga": s.workload.sga,
        "clients": s.workload.clients, "ram": s.guest.memory, "vcpus": s.guest.vcpus,
        "image": s.guest.image, "repeat": s.repeat, "outcome": record.outcome, "reason": record.reason,
        "started_at": record.started_at, "finished_at": record.finished_at,
        "guest_seconds": record.guest_seconds, "wall_seconds": record.wall_seconds,
        "overhead_seconds": record.overhead_seconds, "attempts": record.attempts,
        "expectation_failures": list(record.expectation_failures),
        "console_log": record.console_log, "artifacts_dir": record.artifacts_dir, "source": s.source,
    }


def write_csv(records: Iterable[RunRecord], out: TextIO) -> int:
    """One row per run; metric columns are the union of every run's numeric result fields."""
    records = list(records)
    metrics = [flatten_metrics(r.result) for r in records]
    metric_names = sorted({name for m in metrics for name in m})
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*RUN_COLUMNS, *metric_names])
    for record, values in zip(records, metrics):
        fields = run_fields(record)
        # several failures in one cell, readable in a spreadsheet
        fields["expectation_failures"] = "; ".join(fields["expectation_failures"])
        writer.writerow([_cell(fields[c]) for c in RUN_COLUMNS] + [_cell(values.get(n)) for n in metric_names])
    return len(records)


def to_document(records: Iterable[RunRecord]) -> dict[str, Any]:
    """The JSON export: every run in full."""
    runs = []
    for record in records:
        entry = run_fields(record)
        entry["scenario"] = {
            "workload": dataclasses.asdict(record.scenario.workload),
            "guest": dataclasses.asdict(record.scenario.guest),
            "expect": record.scenario.expect,
        }
        entry["kernel_metadata"] = record.kernel_metadata
        entry["result"] = record.result
        entry["metrics"] = flatten_metrics(record.result)
        series: dict[str, list[list[float]]] = {}
        for name, t, value in series_mod.points(record.timeseries):
            series.setdefault(name, []).append([t, value])
        entry["timeseries"] = series
        entry["host"] = record.host
        entry["host_failures"] = list(record.host_failures)
        runs.append(entry)
    return {"schema": JSON_SCHEMA, "version": JSON_VERSION, "runs": runs}


def write_json(records: Iterable[RunRecord], out: TextIO) -> int:
    document = to_document(records)
    json.dump(document, out, indent=2, sort_keys=False)
    out.write("\n")
    return len(document["runs"])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
