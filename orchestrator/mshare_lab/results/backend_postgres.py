"""The store's PostgreSQL backend (psycopg 3): one database several labs write at once.

Concurrency is PostgreSQL's own: every run's rows go in one transaction, run ids are a
primary key (a clash rolls back and add() draws again), the kernels upsert is
``INSERT ... ON CONFLICT DO UPDATE`` (atomic per row). Migrations run in one transaction
under ``pg_advisory_xact_lock`` so two runs opening a fresh database at once migrate it
once: the second waits, then finds the new version. The schema version is the one row of
``mshare_lab_schema``.

Each thread has its own connection (autocommit; transactions explicit), like the SQLite
backend, so runner threads never wait on each other's queries.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Iterator, Sequence

import psycopg
from psycopg import errors as pg_errors

from .connections import PerThread
from .location import ResultsFileError, ResultsServerError, redact, server_of

VERSION_TABLE = "mshare_lab_schema"
#: pg_advisory_xact_lock key of the migration: any constant; this is "mshr" in ASCII
MIGRATION_LOCK = 0x6D736872
#: the common SQL's types as PostgreSQL spells them: SQLite's INTEGER and REAL are 64-bit,
#: PostgreSQL's are 32-bit (a 4 GiB RAM size overflows INTEGER, REAL keeps 7 digits)
_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION"}
_TYPE_RE = re.compile(r"\b(" + "|".join(_TYPES) + r")\b")
CONNECT_TIMEOUT_S = 10


class Row(tuple):
    """A result row by position or by column name, as sqlite3.Row is."""

    _names: dict[str, int]

    def __new__(cls, values: Sequence[Any], names: dict[str, int]):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: psycopg.Cursor):
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: Row(values, names)


class _Conn:
    """A connection that takes the store's ``?`` placeholders (psycopg's are ``%s``)."""

    def __init__(self, conn: psycopg.Connection):
        self.raw = conn

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor:
        return self.raw.execute(_placeholders(sql), params if params else None)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            with self.raw.cursor() as cursor:
                cursor.executemany(_placeholders(sql), rows)


def _placeholders(sql: str) -> str:
    # the store's SQL has no literal '%' or '?' (patterns are parameters)
    return sql.replace("?", "%s")


class PostgresBackend:
    dialect = "postgresql"
    #: a BIGSERIAL column only PostgreSQL's tables have (SQLite orders by rowid)
    insertion_order = "seq"
    integrity_errors = (psycopg.IntegrityError,)

    def __init__(self, url: str):
        self.url = url
        self._threads = PerThread()

    def describe(self) -> str:
        return redact(self.url)

    def conn(self) -> _Conn:
        conn = self._threads.get()
        if conn is None or conn.raw.closed:
            try:
                raw = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory,
                                      connect_timeout=CONNECT_TIMEOUT_S, application_name="mshare-lab")
            except psycopg.OperationalError as exc:
                raise ResultsServerError(
                    f"cannot open the PostgreSQL results store {self.describe()} ({server_of(self.url)}): "
                    f"{_first_line(exc, self.url)}",
                    hint="start the server or fix host, port, user and database in --results "
                         "(docs/results.md, 'The shared store'), or use a local --results FILE") from exc
            except psycopg.ProgrammingError as exc:
                # a malformed URL (libpq cannot parse it)
                raise ResultsServerError(f"--results {self.describe()}: {_first_line(exc, self.url)}",
                                         hint="write postgresql://USER@HOST:PORT/DATABASE") from exc
            conn = self._threads.keep(_Conn(raw), raw)
        return conn

    def close(self) -> None:
        self._threads.close_all()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Conn]:
        conn = self.conn()
        with conn.raw.transaction():
            yield conn

    # --- schema ------------------------------------------------------------------------

    def version(self) -> int:
        if VERSION_TABLE not in self.tables():
            return 0
        row = self.conn().execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        return row[0] if row else 0

    def tables(self) -> set[str]:
        rows = self.conn().execute("SELECT table_name FROM information_schema.tables "
                                   "WHERE table_schema = current_schema()").fetchall()
        return {row[0] for row in rows}

    def check(self) -> None:
        """The server keeps its own pages sound; nothing to scan (the tables are checked by the store)."""
        self.conn()

    @contextlib.contextmanager
    def migration(self) -> Iterator[tuple[_Conn, int]]:
        with self.transaction() as conn:
            # held until this transaction ends: a second opener waits here, then reads the new version
            conn.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)")
            row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
            if row is None:
                conn.execute(f"INSERT INTO {VERSION_TABLE}(version) VALUES (0)")
            yield conn, (row[0] if row else 0)

    def set_version(self, conn: _Conn, version: int) -> None:
        conn.execute(f"UPDATE {VERSION_TABLE} SET version = ?", (int(version),))

    def ddl(self, statement: str) -> str:
        return _TYPE_RE.sub(lambda m: _TYPES[m.group(1)], statement)

    # --- the few SQL differences ---------------------------------------------------------

    def glob(self, column: str, pattern: str) -> tuple[str, str]:
        """SQLite's GLOB (``*``, ``?``, ``[...]``, case-sensitive) as an anchored POSIX regex."""
        return f"{column} ~ ?", glob_to_regex(pattern)

    def is_duplicate(self, exc: BaseException, constraint: str) -> bool:
        """``constraint`` is ``table.column``; PostgreSQL names the key ``table_pkey``."""
        if not isinstance(exc, pg_errors.UniqueViolation):
            return False
        table = constraint.split(".", 1)[0]
        return exc.diag.constraint_name in (f"{table}_pkey", constraint.replace(".", "_") + "_key")


def glob_to_regex(pattern: str) -> str:
    """SQLite's GLOB as a PostgreSQL regex: '*', '?', '[...]' and '[^...]' ('[!' is no negation there)."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = _bracket_end(pattern, i)
            if end < 0:
                return "(?!)"      # SQLite: a bracket never closed matches nothing
            # ']' first (after an optional '^') is a member, in a glob as in a POSIX bracket
            out.append("[" + pattern[i + 1:end].replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int:
    j = start + 1
    if pattern[j:j + 1] == "^":
        j += 1
    if pattern[j:j + 1] == "]":
        j += 1
    return pattern.find("]", j)


def _first_line(exc: BaseException, url: str) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    # libpq does not echo passwords, but a message may quote the URL: never print a secret
    return text.replace(url, redact(url))
