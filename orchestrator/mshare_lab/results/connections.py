"""One database connection per thread, all closed together: what both store backends need.

Runner threads store runs at the same time; neither sqlite3 nor psycopg connections may be
shared across threads, so each thread opens its own and the store closes them all at once."""

from __future__ import annotations

import threading
from typing import Any


class PerThread:
    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def get(self) -> Any | None:
        """This thread's connection handle, None before the first."""
        return getattr(self._local, "conn", None)

    def keep(self, handle: Any, closable: Any | None = None) -> Any:
        """Remember ``handle`` for this thread; ``closable`` (default: the handle) is closed by close_all."""
        self._local.conn = handle
        with self._lock:
            self._all.append(handle if closable is None else closable)
        return handle

    def close_all(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()
