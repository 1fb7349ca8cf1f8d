"""Fixtures shared by every area's tests.

Tests run for real on this machine (QEMU software emulation, libvirt, kernel builds);
area-specific fixtures live next to the area's tests.
"""

from __future__ import annotations

import os
import shutil

import pytest

from mshare_lab.paths import REPO_ROOT


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0


def require_tool(name: str) -> str:
    """The path of a tool the test needs; setup installs them all, so absence is a failure."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run scripts/setup")
    return path


@pytest.fixture(scope="session")
def postgres_server():
    """A throw-away PostgreSQL cluster (tests/pg_helpers.py), started only for tests that ask
    for it and stopped at the end of the session, also after a failure."""
    from pg_helpers import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server) -> str:
    """The URL of a fresh empty database on the session's PostgreSQL server."""
    return postgres_server.database()
