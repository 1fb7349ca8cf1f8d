"""Synthetic run records for the results tests: real RunRecords with chosen numbers (data, not mocks)."""

from __future__ import annotations

import pytest

from mshare_lab.lab.record import RunRecord
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec


def make_record(kernel="debian-6.1", mechanism="shmem", sga=256 << 20, clients=100, ram=4 << 30,
                repeat=1, outcome="completed", reason=None, started_at=1_800_000_000.0, **result) -> RunRecord:
    scenario = Scenario(kernel, WorkloadSpec(mechanism=mechanism, sga=sga, clients=clients),
                        GuestShape(memory=ram), repeat=repeat, expect={"outcome": ["completed"]},
                        source="examples/default.yaml:12")
    return RunRecord(scenario, outcome, reason=reason, result=dict(result) or None,
                     started_at=started_at, finished_at=started_at + 30.0, guest_seconds=25.0)


@pytest.fixture
def record_factory():
    return make_record
