"""Guest kinds: how one scenario is booted and collected, as a small interface.

The runner knows a guest kind only through ``GuestKind``: ``prepare`` once per matrix (the
micro base image, the Debian disk image), ``attempt`` once per try of a scenario on a
host's driver, and ``runs_on`` to say which hosts can take it. An attempt returns what the
guest left (``Attempt``); the runner alone decides on retries, hosts and records, so the
retry logic exists once. Kinds are found by the scenario's ``image`` through ``KINDS``
(module:class, imported on first use), so the runner imports no kind and no kind imports
the runner.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .outcome import Classification

if TYPE_CHECKING:
    from ..guest.libvirt_driver import LibvirtDriver
    from ..kernel.artifact import KernelArtifact
    from .scenario import Scenario

Progress = Callable[[str], None]

KINDS = {
    "micro": "mshare_lab.lab.micro_guest:MicroGuest",
    "debian": "mshare_lab.deploy.full_guest:FullGuest",
}


@dataclass
class Attempt:
    """What one try of a scenario left: the verdict and what the guest reported."""

    classification: Classification
    result: dict | None = None
    guest_seconds: float = 0.0
    timeseries: dict | None = None
    kernel_metadata: dict[str, Any] | None = None   # when the kind booted something else (Debian's own)
    console_log: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class GuestKind(Protocol):
    image: str

    def runs_on(self, driver: "LibvirtDriver") -> str | None:
        """None when the kind can run on this host, else why not."""

    def prepare(self, scenarios: list["Scenario"], progress: Progress) -> None:
        """Build what every scenario of the kind needs, once per matrix."""

    def attempt(self, scenario: "Scenario", kernel: "KernelArtifact", driver: "LibvirtDriver", workdir: Path,
                progress: Progress, cancel: threading.Event | None, wait_for_memory: bool) -> Attempt:
        """One try: boot, follow, collect, tear down; infra failures come back as infra-error."""


def guest_kind(image: str, **options: Any) -> GuestKind:
    """A new kind for an image name (it keeps what ``prepare`` built for one matrix)."""
    module, _, cls = KINDS[image].partition(":")
    return getattr(importlib.import_module(module), cls)(**options)
