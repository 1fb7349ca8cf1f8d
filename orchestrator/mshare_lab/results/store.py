"""The results store: one SQLite file holding every run the lab has made.

Schema versioned with ``PRAGMA user_version`` and an ordered list of migrations applied
on open, so a results file from an older mshare-lab keeps working. Runner threads add
runs at the same time: each thread gets its own connection (sqlite3 connections must
not be shared across threads) and writes go through one lock, with WAL so readers
never wait for a writer.

Tables: ``kernels`` (name, release, metadata JSON), ``runs`` (one row per executed
scenario, the scenario and result documents as JSON), ``metrics`` (numeric result
fields flattened to dotted names: ``latency_us.p99``) and ``timeseries`` (run, series,
t, value; the workload's own series are stored as ``workload.<name>``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from ..errors import NotFoundError, UserError
from ..lab.kernel_log import KernelLog
from ..lab.record import RunRecord
from ..lab.scenario import GuestShape, Scenario
from ..options import WorkloadSpec
from ..paths import default_results_db
from . import series as series_mod


class ResultsFileError(UserError):
    """The results file is not one this mshare-lab can read (corrupt, or from a newer version)."""


# Ordered: migration i (0-based) takes a file from user_version i to i + 1. Never edit a
# released entry; append a new one.
MIGRATIONS: tuple[str, ...] = (
    # v1: the first store
    """
    CREATE TABLE kernels (
        name TEXT PRIMARY KEY,
        release TEXT,
        metadata TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE runs (
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
    );
    CREATE TABLE metrics (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value REAL NOT NULL,
        PRIMARY KEY (run_id, name)
    );
    CREATE INDEX runs_by_kernel ON runs(kernel, mechanism);
    """,
    # v2: repeats are compared per point, retries and expectation failures are kept, the
    # matrix file a run came from is recorded, and monitor time series get a table
    """
    ALTER TABLE runs ADD COLUMN point_id TEXT;
    UPDATE runs SET point_id = CASE WHEN instr(scenario_id, '#') > 0
                                    THEN substr(scenario_id, 1, instr(scenario_id, '#') - 1)
                                    ELSE scenario_id END;
    ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE runs ADD COLUMN expectation_failures TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE runs ADD COLUMN matrix_source TEXT;
    CREATE INDEX runs_by_point ON runs(point_id);
    CREATE TABLE timeseries (
        run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
        series TEXT NOT NULL,
        t REAL NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX timeseries_by_run ON timeseries(run_id, series, t);
    """,
    # v3: the kernel-log summary of each run (lab.kernel_log: counts per kind, first
    # excerpt, phase, crash title); NULL for runs stored before it existed
    """
    ALTER TABLE runs ADD COLUMN kernel_log TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
#: tables a file of at least that schema version has
_TABLES_SINCE = {1: ("kernels", "runs", "metrics"), 2: ("timeseries",)}
WORKLOAD_SERIES_PREFIX = "workload."


class ResultStore:
    """``ResultStore(path)``: add runs, list and fetch them. Usable from several threads."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path) if path else default_results_db()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._migrate()

    # --- connections -------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                # autocommit mode: transactions are explicit BEGIN/COMMIT below
                conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA foreign_keys = ON")
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.DatabaseError as exc:
                raise ResultsFileError(f"{self.path} is not a results database: {exc}",
                                       hint="point --results at another file or move this one away") from exc
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._conn(), self._write_lock)

    # --- schema ------------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    def _check(self) -> None:
        """Refuse a damaged file at open, before a matrix boots any guest for it.

        ``quick_check`` reads every page (O(size), milliseconds for a lab's store) and finds
        the garbage a torn write or a stray ``dd`` leaves in the middle of the file."""
        try:
            rows = self._conn().execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ResultsFileError(f"{self.path} is damaged: {exc}",
                                   hint="restore it from a copy, or point --results at another file") from exc
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            raise ResultsFileError(f"{self.path} is damaged (sqlite quick_check: {'; '.join(problems)[:300]})",
                                   hint="restore it from a copy, or point --results at another file")
        # a file whose version says a table exists that does not (dropped by hand, or not ours)
        version = self._conn().execute("PRAGMA user_version").fetchone()[0]
        tables = {row[0] for row in self._conn().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        # (a newer file is refused by _migrate with a better message)
        wanted = {n: t for n, t in _TABLES_SINCE.items() if version >= n} if version <= SCHEMA_VERSION else {}
        missing = sorted(t for need in wanted.values() for t in need if t not in tables)
        if missing:
            raise ResultsFileError(f"{self.path} says schema version {version} but has no table "
                                   f"{', '.join(missing)}: not a results store this mshare-lab wrote",
                                   hint="restore it from a copy, or point --results at another file")

    def _migrate(self) -> None:
        self._check()
        with self._transaction() as conn:
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise ResultsFileError(f"{self.path} is not a results database: {exc}",
                                       hint="point --results at another file or move this one away") from exc
            if version > SCHEMA_VERSION:
                raise ResultsFileError(
                    f"{self.path} has schema version {version}, newer than this mshare-lab knows ({SCHEMA_VERSION})",
                    hint="upgrade mshare-lab, or use another --results file")
            for number in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[number]):
                    conn.execute(statement)
                # PRAGMA takes no parameters; the value is our own integer
                conn.execute(f"PRAGMA user_version = {number + 1}")

    # --- writing -----------------------------------------------------------------------

    def add(self, record: RunRecord, *, matrix_source: str | None = None) -> str:
        """Store one run; returns its new run_id (also set on the record)."""
        for _ in range(5):
            run_id = new_run_id(record.started_at or time.time())
            try:
                self._insert(run_id, record, matrix_source)
            except sqlite3.IntegrityError as exc:
                # two runs that started in the same second drew the same random suffix
                if "runs.run_id" in str(exc):
                    continue
                raise
            record.run_id = run_id
            return run_id
        raise sqlite3.IntegrityError("could not draw a unique run id in 5 tries")

    def _insert(self, run_id: str, record: RunRecord, matrix_source: str | None) -> None:
        scenario = record.scenario
        workload = scenario.workload
        result = record.result or None
        release = record.kernel_metadata.get("release") or (result or {}).get("kernel_release")
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO kernels(name, release, metadata) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET release = coalesce(excluded.release, release), "
                "metadata = CASE WHEN excluded.metadata = '{}' THEN metadata ELSE excluded.metadata END",
                (scenario.kernel, release, _json(record.kernel_metadata)))
            conn.execute(
                "INSERT INTO runs(run_id, scenario_id, point_id, kernel, mechanism, sga, clients, ram, repeat,"
                " outcome, reason, started_at, finished_at, guest_seconds, attempts, expectation_failures,"
                " console_log, artifacts_dir, matrix_source, scenario, result, kernel_log)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, scenario.scenario_id, scenario.point_id, scenario.kernel, workload.mechanism,
                 workload.sga, workload.clients, scenario.guest.memory, scenario.repeat,
                 record.outcome, record.reason, record.started_at, record.finished_at, record.guest_seconds,
                 record.attempts, _json(list(record.expectation_failures)), record.console_log,
                 record.artifacts_dir, matrix_source or scenario.source, scenario_to_json(scenario),
                 _json(result) if result is not None else None,
                 _json(record.kernel_log.to_dict()) if record.kernel_log is not None else None))
            conn.executemany("INSERT INTO metrics(run_id, name, value) VALUES (?, ?, ?)",
                             [(run_id, name, value) for name, value in flatten_metrics(result).items()])
            conn.executemany("INSERT INTO timeseries(run_id, series, t, value) VALUES (?, ?, ?, ?)",
                             [(run_id, name, t, v) for name, t, v in _all_series(record)])

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
            where.append("(r.scenario_id GLOB ? OR r.point_id = ?)")
            params += [scenario, scenario]
        sql = _SELECT_RUNS + (" WHERE " + " AND ".join(where) if where else "") + \
            " ORDER BY r.started_at, r.rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self._conn().execute(sql, params).fetchall()
        return [self._record(row) for row in rows]

    def get(self, run_id: str) -> RunRecord:
        row = self._conn().execute(_SELECT_RUNS + " WHERE r.run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no run '{run_id}' in {self.path}",
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
            "SELECT series, t, value FROM timeseries WHERE run_id = ? ORDER BY series, t, rowid", (run_id,))
        for name, t, value in rows:
            out.setdefault(name, []).append((t, value))
        return out

    def kernels(self) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute("SELECT name, release, metadata FROM kernels ORDER BY name")
        return {name: {"release": release, "metadata": json.loads(meta)} for name, release, meta in rows}

    def count(self) -> int:
        return self._conn().execute("SELECT count(*) FROM runs").fetchone()[0]

    def _require(self, run_id: str) -> None:
        if self._conn().execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
            raise NotFoundError(f"no run '{run_id}' in {self.path}",
                                hint="'mshare-lab results list' shows the run ids")

    def _record(self, row: sqlite3.Row) -> RunRecord:
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
            run_id=row["run_id"])


_SELECT_RUNS = "SELECT r.*, k.metadata FROM runs r LEFT JOIN kernels k ON k.name = r.kernel"


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's write lock; ROLLBACK on any error."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock):
        self.conn, self.lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()


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


def _statements(script: str) -> list[str]:
    # executescript would COMMIT our transaction; run the statements one by one instead
    return [s.strip() for s in script.split(";") if s.strip()]
