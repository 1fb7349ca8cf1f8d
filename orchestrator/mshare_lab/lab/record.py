"""What one executed scenario leaves behind: the unit the results store keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .kernel_log import KernelLog
from .scenario import Scenario


@dataclass
class RunRecord:
    scenario: Scenario
    outcome: str                              # one of scenario.OUTCOMES
    reason: str | None = None                 # why, for anything but "completed"
    kernel_metadata: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None      # the workload's result document, when it produced one
    timeseries: dict[str, list] = field(default_factory=dict)   # monitor series (t_s, pagetables_bytes, ...)
    console_log: str | None = None            # path of the kept guest console
    artifacts_dir: str | None = None          # everything else the run kept
    started_at: float = 0.0                   # unix time
    finished_at: float = 0.0
    guest_seconds: float = 0.0                # boot to power-off, as the guest saw the run
    attempts: int = 1                         # infra errors are retried once
    expectation_failures: list[str] = field(default_factory=list)
    kernel_log: KernelLog | None = None       # what the guest kernel complained about (lab.kernel_log)
    # which host ran it (fleet.host_record.HostRecord.to_dict(): name, uri, cpu_model,
    # accelerator kvm|tcg, kernel, hostname) and the hosts that failed under it before
    host: dict[str, Any] | None = None
    host_failures: list[dict[str, Any]] = field(default_factory=list)
    run_id: str | None = None                 # assigned by the store

    @property
    def scenario_id(self) -> str:
        return self.scenario.scenario_id

    @property
    def wall_seconds(self) -> float:
        return max(0.0, self.finished_at - self.started_at)

    @property
    def overhead_seconds(self) -> float:
        """Orchestrator time around the guest run: what the lab itself costs per scenario."""
        return max(0.0, self.wall_seconds - self.guest_seconds)

    def metric(self, name: str) -> Any:
        """A workload metric by dotted name (``latency_us.p99``), None when absent."""
        value: Any = self.result or {}
        for part in name.split("."):
            if not isinstance(value, dict) or part not in value:
                return None
            value = value[part]
        return value
