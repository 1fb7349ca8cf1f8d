"""The result document of one workload run (schema ``mshare-lab/result``, version 1).

Typed access to the fields other areas rely on; the whole document is kept in ``raw``
so nothing the C program measured is lost on the way through Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

SCHEMA = "mshare-lab/result"
VERSION = 1
OUTCOMES = ("completed", "oom", "unsupported", "error")


class ResultSchemaError(ConfigError):
    """A document that is not an mshare-lab/result of a version this code reads."""


@dataclass(frozen=True)
class Latency:
    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class OomKills:
    clients_killed: int = 0
    vmstat_oom_kill_delta: int = 0
    cgroup_oom_kill: int | None = None
    group: bool = False                     # memory.oom.group: the first kill took every client
    group_kills: int | None = None          # memory.events oom_group_kill
    first_seen_s: float | None = None       # when the run saw the first kill (and stopped)
    first_seen_phase: str | None = None


@dataclass(frozen=True)
class WorkloadResult:
    outcome: str
    reason: str | None
    mechanism: str
    kernel_release: str
    region_bytes: int
    clients_requested: int
    clients_attached: int
    pagetables_delta_bytes: int | None
    region_pagetable_bytes: int | None
    client_fixed_pte_bytes: int
    theory_pte_bytes: int
    pte_ratio: float | None
    pte_ratio_raw: float | None
    sharing_verified: bool | None
    attach_populate_s: float | None
    throughput_tps: float | None
    latency_us: Latency
    protect_change_us: float | None
    protect_mode: str | None
    oom_kills: OomKills
    errors: list[str]
    timeseries: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "WorkloadResult":
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise ResultSchemaError(f"not an {SCHEMA} document (schema: {doc.get('schema') if isinstance(doc, dict) else None!r})")
        if doc.get("version") != VERSION:
            raise ResultSchemaError(f"{SCHEMA} version {doc.get('version')!r} is not supported (this code reads {VERSION})",
                                    hint="rebuild mshare-sga from this checkout")
        if doc.get("outcome") not in OUTCOMES:
            raise ResultSchemaError(f"outcome {doc.get('outcome')!r} is not one of {', '.join(OUTCOMES)}")
        latency = doc.get("latency_us") or {}
        oom = doc.get("oom_kills") or {}
        return cls(
            outcome=doc["outcome"],
            reason=doc.get("reason"),
            mechanism=doc["mechanism"],
            kernel_release=doc.get("kernel_release", ""),
            region_bytes=int(doc["region_bytes"]),
            clients_requested=int(doc["clients_requested"]),
            clients_attached=int(doc.get("clients_attached", 0)),
            pagetables_delta_bytes=doc.get("pagetables_delta_bytes"),
            region_pagetable_bytes=doc.get("region_pagetable_bytes"),
            client_fixed_pte_bytes=int(doc.get("client_fixed_pte_bytes", 0)),
            theory_pte_bytes=int(doc.get("theory_pte_bytes", 0)),
            pte_ratio=doc.get("pte_ratio"),
            pte_ratio_raw=doc.get("pte_ratio_raw"),
            sharing_verified=doc.get("sharing_verified"),
            attach_populate_s=doc.get("attach_populate_s"),
            throughput_tps=doc.get("throughput_tps"),
            latency_us=Latency(latency.get("p50"), latency.get("p99")),
            protect_change_us=doc.get("protect_change_us"),
            protect_mode=doc.get("protect_mode"),
            oom_kills=OomKills(int(oom.get("clients_killed", 0)), int(oom.get("vmstat_oom_kill_delta", 0)),
                               oom.get("cgroup_oom_kill"), bool(oom.get("group", False)),
                               oom.get("group_kills"), oom.get("first_seen_s"),
                               oom.get("first_seen_phase")),
            errors=list(doc.get("errors") or []),
            timeseries=dict(doc.get("timeseries") or {}),
            raw=doc,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "WorkloadResult":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultSchemaError(f"result document is not JSON: {exc}") from exc
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.raw, indent=indent, sort_keys=False)

    def summary_lines(self) -> list[str]:
        """The short human summary the CLI prints, in the units a person reads."""
        from ..units import format_metric, format_size

        lines = [f"mechanism {self.mechanism} on {self.kernel_release}: {self.outcome}"
                 + (f" ({self.reason})" if self.reason else "")]
        lines.append(f"clients attached {self.clients_attached}/{self.clients_requested}, "
                     f"region {format_size(self.region_bytes)}")
        if self.pagetables_delta_bytes is not None:
            ratio = "-" if self.pte_ratio is None else f"{self.pte_ratio:.3f}"
            lines.append(f"PageTables +{format_size(self.pagetables_delta_bytes)} "
                         f"(region {format_size(self.region_pagetable_bytes or 0)} vs theory "
                         f"{format_size(self.theory_pte_bytes)}, ratio {ratio}); "
                         f"sharing verified: {self.sharing_verified}")
        lines.append(f"attach+populate {format_metric('attach_populate_s', self.attach_populate_s)}, "
                     f"{format_metric('throughput_tps', self.throughput_tps)}, "
                     f"latency p50 {format_metric('latency_us.p50', self.latency_us.p50)} "
                     f"p99 {format_metric('latency_us.p99', self.latency_us.p99)}")
        lines.append(f"protection change {self._protection_text()} ({self.protect_mode}); "
                     f"oom kills: {self.oom_kills.clients_killed} clients, "
                     f"{self.oom_kills.vmstat_oom_kill_delta} system-wide")
        for error in self.errors:
            lines.append(f"error: {error}")
        return lines

    def _protection_text(self) -> str:
        """The read-only change's time, but only when it held in every client asked;
        otherwise how many it held in, never a fast-looking number."""
        from ..units import format_metric

        effective = self.raw.get("protect_effective")
        if isinstance(effective, dict) and effective.get("asked") and effective.get("held") != effective.get("asked"):
            return f"held in {effective.get('held')}/{effective.get('asked')} clients"
        text = format_metric("protect_change_us", self.protect_change_us)
        back = self.raw.get("protect_back_us")
        if back is not None:
            text += f", back to read-write {format_metric('protect_back_us', back)}"
        return text
