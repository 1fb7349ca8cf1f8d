"""Which machine ran a scenario: kept with every run, so hosts are never compared blindly.

Under TCG a guest is roughly ten times slower than under KVM, and one CPU model's page
walk is not another's: a comparison that mixes them compares machines, not kernels.
``compare`` warns when its runs differ in ``accelerator`` or ``cpu_model``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ACCELERATORS = ("kvm", "tcg")


@dataclass(frozen=True)
class HostRecord:
    name: str              # the lab file's name for the host ("local" without a lab file)
    uri: str               # libvirt URI without query parameters (no key paths)
    cpu_model: str         # libvirt capabilities host/cpu/model ("Broadwell")
    accelerator: str       # kvm | tcg
    kernel: str            # host kernel release
    hostname: str          # what the host calls itself

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "HostRecord | None":
        if not isinstance(data, dict):
            return None
        return cls(**{k: str(data.get(k) or "") for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        return f"{self.name} ({self.hostname}, {self.cpu_model}, {self.accelerator}, Linux {self.kernel})"


def accelerator_of(domain_type: str) -> str:
    """libvirt's domain type as the accelerator it means: kvm, or qemu = TCG."""
    return "kvm" if domain_type == "kvm" else "tcg"
