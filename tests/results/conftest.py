"""Synthetic run records for the results tests: real RunRecords with chosen numbers (data, not mocks)."""

from __future__ import annotations

import pytest
from store_helpers import make_record


@pytest.fixture
def record_factory():
    return make_record
