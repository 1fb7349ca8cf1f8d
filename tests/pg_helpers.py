"""A throw-away PostgreSQL cluster for tests: Debian's server binaries, a temp dir, 127.0.0.1 only.

``PostgresServer.start()`` runs initdb (as the ``postgres`` system user: initdb refuses root)
into a fresh directory under /tmp, starts the server on a free port of 127.0.0.1 with its
unix socket in that directory and trust authentication, and ``stop()`` kills it
(``pg_ctl stop -m immediate``) and removes the directory. ``database()`` makes a fresh
empty database and returns its URL, so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SYSTEM_USER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, *, fsync: bool = False) -> None:
        # tests need no durability; a benchmark of the real cost turns fsync on
        self.fsync = fsync
        self.dir: Path | None = None
        self.port: int | None = None
        self._names = itertools.count(1)

    @property
    def data(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    def url(self, database: str = "postgres", *, user: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password else ""
        return f"postgresql://{user}{secret}@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", SYSTEM_USER, "--", *argv] if os.geteuid() == 0 else list(argv)
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> "PostgresServer":
        for tool in ("initdb", "pg_ctl"):
            if not (PG_BIN / tool).exists():
                raise RuntimeError(f"{PG_BIN / tool} is missing: run scripts/setup (Debian's postgresql package)")
        self.dir = Path(tempfile.mkdtemp(prefix="mshare-pg-"))
        try:
            if os.geteuid() == 0:
                user = pwd.getpwnam(SYSTEM_USER)
                os.chown(self.dir, user.pw_uid, user.pw_gid)
            done = self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "-A", "trust", "-E", "UTF8", "--no-sync", "--no-instructions")
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip()[-800:]}")
            # a free port can be taken between the probe and the bind: try a few
            for _ in range(5):
                self.port = free_port()
                options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} "
                           f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=60 -c shared_buffers=32MB")
                done = self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                                         "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")
                if done.returncode == 0:
                    return self
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-400:]}; "
                               f"{(self.dir / 'server.log').read_text()[-800:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.dir is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def running(self) -> bool:
        return self.dir is not None and self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status").returncode == 0

    def database(self, prefix: str = "t") -> str:
        """A new empty database; its URL."""
        import psycopg
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def connect(self, url: str):
        import psycopg
        return psycopg.connect(url, autocommit=True)
