"""A run record as a JSON file, for when the store cannot take it, and its import.

A matrix must never lose a finished run: when ``store.add`` fails (a corrupted or full
disk, a file another program locked), the runner keeps the record as
``<run dir>/record.json`` in the JSON export format (``mshare-lab/results``), and
``mshare-lab results import FILE.json`` adds it (or any JSON export) to a store later.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Location
from ..lab.record import RunRecord
from ..lab.scenario import GuestShape, Scenario
from ..options import WorkloadSpec
from . import export

RECORD_FILE = "record.json"


def write_record(record: RunRecord, path: Path) -> Path:
    """Write one record as a JSON export document (atomically)."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(export.to_document([record]), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_records(path: Path) -> list[RunRecord]:
    """The runs of a JSON export document; ConfigError naming the file when it is not one."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"not JSON: {exc}", location=Location(path, getattr(exc, "lineno", None)),
                          hint="results import takes the JSON of 'results export --json' or a run's record.json") from exc
    if not isinstance(doc, dict) or doc.get("schema") != export.JSON_SCHEMA:
        raise ConfigError(f"not an {export.JSON_SCHEMA} document", location=Location(path),
                          hint="results import takes the JSON of 'results export --json' or a run's record.json")
    if doc.get("version") != export.JSON_VERSION:
        raise ConfigError(f"{export.JSON_SCHEMA} version {doc.get('version')!r} is not supported "
                          f"(this mshare-lab reads {export.JSON_VERSION})", location=Location(path))
    runs = doc.get("runs")
    if not isinstance(runs, list):
        raise ConfigError("'runs' must be a list", location=Location(path))
    return [_record(entry, path, i) for i, entry in enumerate(runs)]


RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")


def import_run_id(entry: dict[str, Any]) -> str:
    """The id a run keeps when imported: its own, or one drawn from its content.

    An export carries each run's id; a runner's record.json has none (the store never took
    it). Its id is then the start time plus a hash of the record, so importing the same file
    twice finds the run already there instead of adding it again."""
    own = entry.get("run_id")
    if isinstance(own, str) and RUN_ID.match(own):
        return own
    content = json.dumps({k: v for k, v in entry.items() if k != "run_id"}, sort_keys=True, default=str)
    started = float(entry.get("started_at") or 0.0)
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(started)) + "-" + hashlib.sha256(content.encode()).hexdigest()[:8]


def _record(entry: Any, path: Path, index: int) -> RunRecord:
    try:
        scenario = entry["scenario"]
        workload = _known(WorkloadSpec, scenario.get("workload") or {})
        guest = _known(GuestShape, scenario.get("guest") or {})
        return RunRecord(
            scenario=Scenario(kernel=str(entry["kernel"]), workload=workload, guest=guest,
                              repeat=int(entry.get("repeat") or 1), expect=dict(scenario.get("expect") or {}),
                              source=entry.get("source")),
            outcome=str(entry["outcome"]), reason=entry.get("reason"),
            kernel_metadata=dict(entry.get("kernel_metadata") or {}), result=entry.get("result"),
            timeseries=dict(entry.get("timeseries") or {}), console_log=entry.get("console_log"),
            artifacts_dir=entry.get("artifacts_dir"), started_at=float(entry.get("started_at") or 0.0),
            finished_at=float(entry.get("finished_at") or 0.0),
            guest_seconds=float(entry.get("guest_seconds") or 0.0), attempts=int(entry.get("attempts") or 1),
            expectation_failures=list(entry.get("expectation_failures") or []),
            host=dict(entry["host"]) if entry.get("host") else None,
            host_failures=list(entry.get("host_failures") or []),
            run_id=import_run_id(entry))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"run {index + 1} is not a complete record: {exc!r}", location=Location(path)) from exc


def _known(cls, values: dict[str, Any]):
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})
