"""Run records for the results tests, importable from a subprocess too (the concurrent writers)."""

from __future__ import annotations

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


def rich_record(i: int, kernel: str = "debian-6.1", mechanism: str = "shmem", started_at: float = 1_800_000_000.0,
                host: dict | None = None):
    """A record with every part the store keeps: result, metrics, both kinds of series, host."""
    record = make_record(kernel=kernel, mechanism=mechanism, repeat=i % 3 + 1, started_at=started_at + i,
                         pte_ratio=1.0 + i / 100, region_pagetable_bytes=56_000_000 + i,
                         latency_us={"p50": 12.5, "p99": 80.0 + i}, kernel_release="6.1.0-28-cloud-amd64",
                         timeseries={"t_s": [0.0, 1.0], "clients": [0, 100]})
    record.kernel_metadata = {"release": "6.1.0-28-cloud-amd64", "kind": "distribution"}
    record.timeseries = {"t_s": [0.0, 0.5, 1.0], "pagetables_bytes": [4096, 2e6, 5.6e7 + i]}
    record.expectation_failures = [f"pte_ratio: expected at most 1.0, measured {record.metric('pte_ratio')}"]
    record.host = host if host is not None else {
        "name": "here", "uri": "qemu:///system", "cpu_model": "Broadwell", "accelerator": "kvm",
        "kernel": "6.1.0-27-amd64", "hostname": "lab1"}
    record.host_failures = [{"host": "loop", "uri": "qemu+ssh://root@127.0.0.1:2222/system",
                             "at": 1_800_000_000.5, "reason": "connection lost"}] if i % 2 else []
    return record
