"""The results store: every run the lab has made, in a SQLite file or a PostgreSQL database.

``ResultStore(location)`` takes what ``--results`` gives (results.location): a path opens the
local SQLite file (results.backend_sqlite), a ``postgresql://`` URL the shared server
(results.backend_postgres). Both hold the same schema, built by the same ordered list of
migrations applied on open, so a results store from an older mshare-lab keeps working; the
backend supplies the connections, the version bookkeeping and the few SQL differences.

Tables: ``kernels`` (name, release, metadata JSON), ``runs`` (one row per executed
scenario, the scenario and result documents as JSON, the host record), ``metrics``
(numeric result fields flattened to dotted names: ``latency_us.p99``) and ``timeseries``
(run, series, t, value; the workload's own series are stored as ``workload.<name>``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Union

from ..errors import NotFoundError
from ..lab.kernel_log import KernelLog
from ..lab.record import RunRecord
from ..lab.scenario import GuestShape, Scenario
from ..options import WorkloadSpec
from . import series as series_mod
from .location import ResultsFileError, ResultsLocation, results_location

__all__ = ["ResultStore", "ResultsFileError", "MIGRATIONS", "SCHEMA_VERSION"]

#: one statement of a migration: SQL both dialects accept, or one text per dialect
#: ({"sqlite": ..., "postgresql": ...}; a dialect without an entry skips the statement).
#: PostgreSQL reads INTEGER as BIGINT and REAL as DOUBLE PRECISION (backend_postgres).
Statement = Union[str, Mapping[str, str]]


@dataclass(frozen=True)
class Migration:
    statements: tuple[Statement, ...]

    def for_dialect(self, dialect: str) -> list[str]:
        out = []
        for statement in self.statements:
            text = statement if isinstance(statement, str) else statement.get(dialect)
            if text:
                out.append(" ".join(text.split()))
        return out

    def script(self, dialect: str = "sqlite") -> str:
        """The whole migration as one script (``sqlite3.executescript`` takes it)."""
        return ";\n".join(self.for_dialect(dialect)) + ";\n"


# Ordered: migration i (0-based) takes a store from version i to i + 1. Never edit a
# released entry; append a new one.
MIGRATIONS: tuple[Migration, ...] = (
    # v1: the first store
    Migration((
        """CREATE TABLE kernels (
            name TEXT PRIMARY KEY,
            release TEXT,
            metadata TEXT NOT NULL DEFAULT '{}'
        )""",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            scenario_id TEXT NOT NULL,
            kernel TEXT NOT NULL,
            mechanism TEXT NOT NULL,
            sga INTEGER NOT NULL,
            clients INTEGER NOT NULL,
            ram INTEGER NOT NULL,
            repeat INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            reason TEXT,
            started_at REAL,
            finished_at REAL,
            guest_seconds REAL,
            console_log TEXT,
            artifacts_dir TEXT,
            scenario TEXT NOT NULL,
            result TEXT
        )""",
        # insertion order: SQLite has rowid, PostgreSQL gets a sequence
        {"postgresql": "ALTER TABLE runs ADD COLUMN seq BIGSERIAL"},
        """CREATE TABLE metrics (
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run_id, name)
        )""",
        "CREATE INDEX runs_by_kernel ON runs(kernel, mechanism)",
    )),
    # v2: repeats are compared per point, retries and expectation failures are kept, the
    # matrix file a run came from is recorded, and monitor time series get a table
    Migration((
        "ALTER TABLE runs ADD COLUMN point_id TEXT",
        {"sqlite": """UPDATE runs SET point_id = CASE WHEN instr(scenario_id, '#') > 0
                          THEN substr(scenario_id, 1, instr(scenario_id, '#') - 1)
                          ELSE scenario_id END""",
         "postgresql": """UPDATE runs SET point_id = CASE WHEN strpos(scenario_id, '#') > 0
                          THEN substr(scenario_id, 1, strpos(scenario_id, '#') - 1)
                          ELSE scenario_id END"""},
        "ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE runs ADD COLUMN expectation_failures TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE runs ADD COLUMN matrix_source TEXT",
        "CREATE INDEX runs_by_point ON runs(point_id)",
        """CREATE TABLE timeseries (
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            series TEXT NOT NULL,
            t REAL NOT NULL,
            value REAL NOT NULL
        )""",
        {"postgresql": "ALTER TABLE timeseries ADD COLUMN seq BIGSERIAL"},
        "CREATE INDEX timeseries_by_run ON timeseries(run_id, series, t)",
    )),
    # v3: the kernel-log summary of each run (lab.kernel_log: counts per kind, first
    # excerpt, phase, crash title); NULL for runs stored before it existed
    Migration(("ALTER TABLE runs ADD COLUMN kernel_log TEXT",)),
    # v4: which host ran it (fleet.host_record.HostRecord.to_dict() as JSON; NULL for runs
    # stored before the lab had hosts) and the hosts that failed under it (JSON list)
    Migration((
        "ALTER TABLE runs ADD COLUMN host TEXT",
        "ALTER TABLE runs ADD COLUMN host_failures TEXT NOT NULL DEFAULT '[]'",
    )),
)
SCHEMA_VERSION = len(MIGRATIONS)
#: tables a store of at least that schema version has
_TABLES_SINCE = {1: ("kernels", "runs", "metrics"), 2: ("timeseries",)}
WORKLOAD_SERIES_PREFIX = "workload."
_RUN_COLUMNS = ("run_id", "scenario_id", "point_id", "kernel", "mechanism", "sga", "clients", "ram", "repeat",
                "outcome", "reason", "started_at", "finished_at", "guest_seconds", "attempts",
                "expectation_failures", "console_log", "artifacts_dir", "matrix_source", "scenario", "result",
                "kernel_log", "host", "host_failures")
_INSERT_RUN = (f"INSERT INTO runs({', '.join(_RUN_COLUMNS)}) VALUES ({', '.join('?' for _ in _RUN_COLUMNS)})")


def open_backend(location: ResultsLocation):
    if location.is_postgres:
        # imported here: psycopg is only loaded by those who use a server
        from .backend_postgres import PostgresBackend
        return PostgresBackend(location.url)
    from .backend_sqlite import SqliteBackend
    return SqliteBackend(location.path)


class ResultStore:
    """``ResultStore(location)``: add runs, list and fetch them. Usable from several threads.

    ``location`` is a path, a ``postgresql://`` URL, a ResultsLocation or None (the default file)."""

    def __init__(self, location: ResultsLocation | Path | str | None = None):
        self.location = results_location(location)
        self._db = open_backend(self.location)
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @property
    def path(self) -> Path | None:
        """The SQLite file (None for a PostgreSQL store: see ``location``)."""
        return self.location.path

    @property
    def dialect(self) -> str:
        return self._db.dialect

    def _conn(self):
        return self._db.conn()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- schema ------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self._db.version()

    def _check(self) -> None:
        self._db.check()
        # a store whose version says a table exists that does not (dropped by hand, or not ours)
        version = self._db.version()
        tables = self._db.tables()
        # (a newer store is refused by _migrate with a better message)
        wanted = {n: t for n, t in _TABLES_SINCE.items() if version >= n} if version <= SCHEMA_VERSION else {}
        missing = sorted(t for need in wanted.values() for t in need if t not in tables)
        if missing:
            raise ResultsFileError(f"{self.location} says schema version {version} but has no table "
                                   f"{', '.join(missing)}: not a results store this mshare-lab wrote",
                                   hint="restore it from a copy, or point --results at another file")

    def _migrate(self) -> None:
        self._check()
        with self._db.migration() as (conn, version):
            if version > SCHEMA_VERSION:
                raise ResultsFileError(
                    f"{self.location} has schema version {version}, newer than this mshare-lab knows "
                    f"({SCHEMA_VERSION})", hint="upgrade mshare-lab, or use another --results file")
            for number in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[number].for_dialect(self._db.dialect):
                    conn.execute(self._db.ddl(statement))
                self._db.set_version(conn, number + 1)

    # --- writing -----------------------------------------------------------------------

    def add(self, record: RunRecord, *, matrix_source: str | None = None) -> str:
        """Store one run; returns its new run_id (also set on the record)."""
        for _ in range(5):
            run_id = new_run_id(record.started_at or time.time())
            try:
                self._insert(run_id, record, matrix_source)
            except self._db.integrity_errors as exc:
                # two runs that started in the same second drew the same random suffix (the
                # transaction rolled back whole: draw again)
                if self._db.is_duplicate(exc, "runs.run_id"):
                    continue
                raise
            record.run_id = run_id
            return run_id
        raise ResultsFileError(f"could not draw a unique run id in 5 tries in {self.location}")

    def add_existing(self, record: RunRecord, *, matrix_source: str | None = None) -> bool:
        """Store a run under the run_id it already has (an import); False when that id is there."""
        if not record.run_id:
            raise ValueError("add_existing needs a record with a run_id")
        return self._insert(record.run_id, record, matrix_source, if_absent=True)

    def merge_from(self, other: "ResultStore") -> tuple[int, int]:
        """Every run of ``other`` not already here (by run_id): (added, skipped)."""
        sources = {row[0]: row[1] for row in other._conn().execute("SELECT run_id, matrix_source FROM runs")}
        added = skipped = 0
        for record in other.runs():
            if self.add_existing(record, matrix_source=sources.get(record.run_id)):
                added += 1
            else:
                skipped += 1
        return added, skipped

    def _insert(self, run_id: str, record: RunRecord, matrix_source: str | None, *,
                if_absent: bool = False) -> bool:
        scenario = record.scenario
        workload = scenario.workload
        result = record.result or None
        release = record.kernel_metadata.get("release") or (result or {}).get("kernel_release")
        with self._db.transaction() as conn:
            # one statement per kernel row: atomic under concurrent writers on both backends
            conn.execute(
                "INSERT INTO kernels(name, release, metadata) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET release = coalesce(excluded.release, kernels.release), "
                "metadata = CASE WHEN excluded.metadata = '{}' THEN kernels.metadata ELSE excluded.metadata END",
                (scenario.kernel, release, _json(record.kernel_metadata)))
            inserted = conn.execute(
                _INSERT_RUN + (" ON CONFLICT(run_id) DO NOTHING" if if_absent else ""),
                (run_id, scenario.scenario_id, scenario.point_id, scenario.kernel, workload.mechanism,
                 workload.sga, workload.clients, scenario.guest.memory, scenario.repeat,
                 record.outcome, record.reason, record.started_at, record.finished_at, record.guest_seconds,
                 record.attempts, _json(list(record.expectation_failures)), record.console_log,
                 record.artifacts_dir, matrix_source or scenario.source, scenario_to_json(scenario),
                 _json(result) if result is not None else None,
                 _json(record.kernel_log.to_dict()) if record.kernel_log is not None else None,
                 _json(record.host) if record.host is not None else None,
                 _json(list(record.host_failures)))).rowcount
            if not inserted:
                return False
            conn.executemany("INSERT INTO metrics(run_id, name, value) VALUES (?, ?, ?)",
                             [(run_id, name, value) for name, value in flatten_metrics(result).items()])
            conn.executemany("INSERT INTO timeseries(run_id, series, t, value) VALUES (?, ?, ?, ?)",
                             [(run_id, name, t, v) for name, t, v in _all_series(record)])
        return True

    # --- reading -----------------------------------------------------------------------

    def runs(self, kernel: str | None = None, mechanism: str | None = None, outcome: str | None = None,
             scenario: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs in the order they started, filtered; ``scenario`` is an id, a point id or a glob."""
        where, params = [], []
        for column, value in (("kernel", kernel), ("mechanism", mechanism), ("outcome", outcome)):
            if value is not None:
                where.append(f"r.{column} = ?")
                params.append(value)
        if scenario is not None:
            glob, pattern = self._db.glob("r.scenario_id", scenario)
            where.append(f"({glob} OR r.point_id = ?)")
            params += [pattern, scenario]
        sql = _SELECT_RUNS + (" WHERE " + " AND ".join(where) if where else "") + \
            f" ORDER BY r.started_at, r.{self._db.insertion_order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self._conn().execute(sql, params).fetchall()
        return [self._record(row) for row in rows]

    def get(self, run_id: str) -> RunRecord:
        row = self._conn().execute(_SELECT_RUNS + " WHERE r.run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no run '{run_id}' in {self.location}",
                                hint="'mshare-lab results list' shows the run ids")
        return self._record(row)

    def metrics(self, run_id: str) -> dict[str, float]:
        self._require(run_id)
        rows = self._conn().execute("SELECT name, value FROM metrics WHERE run_id = ? ORDER BY name", (run_id,))
        return {name: value for name, value in rows}

    def timeseries(self, run_id: str) -> dict[str, list[tuple[float, float]]]:
        """Every series of the run as (t, value) pairs in time order."""
        self._require(run_id)
        out: dict[str, list[tuple[float, float]]] = {}
        rows = self._conn().execute(
            "SELECT series, t, value FROM timeseries WHERE run_id = ? "
            f"ORDER BY series, t, {self._db.insertion_order}", (run_id,))
        for name, t, value in rows:
            out.setdefault(name, []).append((t, value))
        return out

    def metric_rows(self, kernel: str, name: str) -> list[tuple[str, str, float]]:
        """(run_id, scenario JSON, value) of one positive metric of a kernel's runs, latest first."""
        rows = self._conn().execute(
            "SELECT r.run_id, r.scenario, m.value FROM runs r JOIN metrics m ON m.run_id = r.run_id "
            "WHERE r.kernel = ? AND m.name = ? AND m.value > 0 "
            f"ORDER BY r.started_at DESC, r.{self._db.insertion_order} DESC", (kernel, name)).fetchall()
        return [(row[0], row[1], row[2]) for row in rows]

    def kernels(self) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute("SELECT name, release, metadata FROM kernels ORDER BY name")
        return {name: {"release": release, "metadata": json.loads(meta)} for name, release, meta in rows}

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM runs").fetchone()[0]

    def _require(self, run_id: str) -> None:
        if self._conn().execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise NotFoundError(f"no run '{run_id}' in {self.location}",
                                hint="'mshare-lab results list' shows the run ids")

    def _record(self, row) -> RunRecord:
        result = json.loads(row["result"]) if row["result"] else None
        series = {name: [list(p) for p in points] for name, points in self.timeseries(row["run_id"]).items()
                  if not name.startswith(WORKLOAD_SERIES_PREFIX)}
        return RunRecord(
            scenario=scenario_from_json(row["scenario"]),
            outcome=row["outcome"], reason=row["reason"],
            kernel_metadata=json.loads(row["metadata"] or "{}"),
            result=result, timeseries=series,
            console_log=row["console_log"], artifacts_dir=row["artifacts_dir"],
            started_at=row["started_at"] or 0.0, finished_at=row["finished_at"] or 0.0,
            guest_seconds=row["guest_seconds"] or 0.0, attempts=row["attempts"],
            expectation_failures=json.loads(row["expectation_failures"]),
            kernel_log=KernelLog.from_dict(json.loads(row["kernel_log"])) if row["kernel_log"] else None,
            host=json.loads(row["host"]) if row["host"] else None,
            host_failures=json.loads(row["host_failures"] or "[]"),
            run_id=row["run_id"])


_SELECT_RUNS = "SELECT r.*, k.metadata FROM runs r LEFT JOIN kernels k ON k.name = r.kernel"


def new_run_id(started_at: float) -> str:
    """Sortable and unique: ``20261125-203600-a1b2c3d4`` (UTC start time + random; add() retries a clash)."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(started_at)) + "-" + secrets.token_hex(4)


#: top-level result fields that are numbers but not measurements (ids, times, the schema)
NOT_METRICS = ("version", "started_at", "timeseries", "resources", "memory_cgroup", "limits_raised")


def flatten_metrics(result: dict[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """Numeric fields of a result document by dotted name; booleans, text and series left out."""
    out: dict[str, float] = {}
    for key, value in (result or {}).items():
        name = f"{prefix}{key}"
        if not prefix and key in NOT_METRICS:
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def _all_series(record: RunRecord) -> Iterator[tuple[str, float, float]]:
    yield from series_mod.points(record.timeseries)
    workload = (record.result or {}).get("timeseries")
    for name, t, value in series_mod.points(workload):
        yield WORKLOAD_SERIES_PREFIX + name, t, value


def scenario_to_json(scenario: Scenario) -> str:
    return _json({
        "kernel": scenario.kernel,
        "workload": dataclasses.asdict(scenario.workload),
        "guest": dataclasses.asdict(scenario.guest),
        "repeat": scenario.repeat,
        "expect": scenario.expect,
        "source": scenario.source,
    })


def scenario_from_json(text: str) -> Scenario:
    data = json.loads(text)
    # fields a later model dropped are ignored, new ones keep their defaults
    workload = _known(WorkloadSpec, data.get("workload", {}))
    guest = _known(GuestShape, data.get("guest", {}))
    return Scenario(kernel=data["kernel"], workload=workload, guest=guest, repeat=data.get("repeat", 1),
                    expect=data.get("expect") or {}, source=data.get("source"))


def _known(cls, values: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
