"""The store's SQLite backend: one local file, the default.

Runner threads add runs at the same time: each thread gets its own connection (sqlite3
connections must not be shared across threads) and writes go through one lock, with WAL
so readers never wait for a writer; ``BEGIN IMMEDIATE`` serialises writers of other
processes on the same file. The schema version is ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

from .connections import PerThread
from .location import ResultsFileError

HINT = "restore it from a copy, or point --results at another file"


class SqliteBackend:
    dialect = "sqlite"
    #: the column that orders rows as they were inserted
    insertion_order = "rowid"

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._threads = PerThread()
        self._write_lock = threading.Lock()

    def describe(self) -> str:
        return str(self.path)

    def conn(self) -> sqlite3.Connection:
        conn = self._threads.get()
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
            self._threads.keep(conn)
        return conn

    def close(self) -> None:
        self._threads.close_all()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the store's write lock; ROLLBACK on any error."""
        conn = self.conn()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # --- schema ------------------------------------------------------------------------

    def version(self) -> int:
        return self.conn().execute("PRAGMA user_version").fetchone()[0]

    def tables(self) -> set[str]:
        return {row[0] for row in self.conn().execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def check(self) -> None:
        """Refuse a damaged file at open, before a matrix boots any guest for it.

        ``quick_check`` reads every page (O(size), milliseconds for a lab's store) and finds
        the garbage a torn write or a stray ``dd`` leaves in the middle of the file."""
        try:
            rows = self.conn().execute("PRAGMA quick_check(5)").fetchall()
        except sqlite3.DatabaseError as exc:
            raise ResultsFileError(f"{self.path} is damaged: {exc}", hint=HINT) from exc
        problems = [row[0] for row in rows if row[0] != "ok"]
        if problems:
            raise ResultsFileError(f"{self.path} is damaged (sqlite quick_check: {'; '.join(problems)[:300]})",
                                   hint=HINT)

    @contextlib.contextmanager
    def migration(self) -> Iterator[tuple[sqlite3.Connection, int]]:
        """The write transaction migrations run in, with the version read inside it."""
        with self.transaction() as conn:
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise ResultsFileError(f"{self.path} is not a results database: {exc}",
                                       hint="point --results at another file or move this one away") from exc
            yield conn, version

    def set_version(self, conn: sqlite3.Connection, version: int) -> None:
        # PRAGMA takes no parameters; the value is our own integer
        conn.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> str:
        return statement

    # --- the few SQL differences ---------------------------------------------------------

    def glob(self, column: str, pattern: str) -> tuple[str, str]:
        return f"{column} GLOB ?", pattern

    def is_duplicate(self, exc: BaseException, constraint: str) -> bool:
        """``constraint`` is ``table.column`` of a unique key (sqlite names the column)."""
        return isinstance(exc, sqlite3.IntegrityError) and constraint in str(exc)

    integrity_errors = (sqlite3.IntegrityError,)
