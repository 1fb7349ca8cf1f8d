"""Fixtures of the deploy area's tests; the helpers live in deploy_helpers.py."""

from __future__ import annotations

import pytest

from deploy_helpers import start_sshd


@pytest.fixture
def loopback_sshd(tmp_path):
    server = start_sshd(tmp_path / "sshd")
    try:
        yield server
    finally:
        server.stop()
