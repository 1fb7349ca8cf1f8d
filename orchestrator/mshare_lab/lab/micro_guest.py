"""The micro guest kind: kernel + initramfs, results streamed as frames over ttyS1.

One attempt: the scenario's env is a few hundred bytes appended to the shared base image
(``initrd_tail``; the host joins them, ``guest.host_files``), the guest boots through the
host's driver, its progress lines are followed on the console, QEMU's resident memory is
sampled, and after it ends (or the timeout) the frames are decoded and classified
(``lab.outcome``). Infra failures come back as an ``infra-error`` attempt for the runner
to retry; nothing outlives the attempt.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import frames
from ..errors import InfraError
from ..guest import console as serial
from ..guest.domain import DomainSpec, owner_metadata
from .guest_input import hugepages_needed, kernel_flags, system_map, workload_args
from .guest_kind import Attempt
from .outcome import Classification, Evidence, classify
from .progress import ProgressThrottle

if TYPE_CHECKING:
    from ..guest.libvirt_driver import LibvirtDriver
    from ..kernel.artifact import KernelArtifact
    from .scenario import Scenario

Progress = Callable[[str], None]

#: host-side samples of QEMU's resident memory (the guest RAM it has touched)
MONITOR_INTERVAL = 1.0


def micro_env(scenario: "Scenario", kernel: "KernelArtifact") -> dict[str, str]:
    from ..image import micro
    flags = kernel_flags(kernel.mechanisms)
    sysctls = dict(item.split("=", 1) for item in scenario.guest.sysctls)
    return micro.env_for(workload_args(scenario.workload) + flags, flags,
                         nr_hugepages=hugepages_needed(scenario.workload),
                         sysctls=sysctls or None, scenario_id=scenario.scenario_id)


class MicroGuest:
    """``image: micro``: runs on every host (its files reach a remote host through libvirt)."""

    image = "micro"

    def __init__(self, base: Path | None = None):
        #: the base initramfs (``image.micro.build()``); tests pass one that misbehaves
        self.base = base

    def runs_on(self, driver: "LibvirtDriver") -> str | None:
        return None

    def prepare(self, scenarios: list["Scenario"], progress: Progress) -> None:
        if self.base is None:
            from ..image import micro
            self.base = micro.build(progress)

    def attempt(self, scenario: "Scenario", kernel: "KernelArtifact", driver: "LibvirtDriver", workdir: Path,
                progress: Progress, cancel: threading.Event | None, wait_for_memory: bool) -> Attempt:
        from ..image import micro
        self.prepare([scenario], progress)
        say = progress
        name = driver.new_name()
        console_path = workdir / "console.log"
        serial_path = workdir / "serial.log"
        try:
            domain_type = driver.probe_domain_type()
            spec = DomainSpec(
                name=name, memory=scenario.guest.memory, vcpus=scenario.guest.vcpus,
                kernel=kernel.bzimage, initrd=self.base, initrd_tail=micro.scenario_tail(micro_env(scenario, kernel)),
                cmdline=micro.MICRO_CMDLINE, console_path=console_path, serial_path=serial_path,
                domain_type=domain_type, hugepage_backing=scenario.guest.hugepage_backing,
                metadata=owner_metadata(driver.run_id))
            say(f"boot {name} ({domain_type}, {kernel.release})")
            with driver.boot(spec, wait_for_memory=wait_for_memory, cancel=cancel) as guest:
                ended, series = _follow(guest, scenario.guest.timeout, say, cancel)
                if not ended:
                    say(f"no end after {scenario.guest.timeout:g} s: stopping the guest")
                    guest.destroy()
                guest_seconds = guest.guest_seconds
                end_reason, by_infra = guest.end_reason, guest.ended_by_infra
        except InfraError as exc:
            # libvirt refused, QEMU did not start, the host went away: the machinery's fault
            return Attempt(Classification("infra-error", str(exc), retry=True))
        # read_guest_output stitches virtlogd's rotated parts (serial.log.0, ...) back together
        output = micro.read_guest_output(serial_path) if serial_path.exists() else micro.GuestOutput()
        evidence = Evidence(
            ended=ended, end_reason=end_reason, ended_by_infra=by_infra and not ended_by_guest(output),
            timeout=scenario.guest.timeout, console=serial.read_text(console_path),
            result=output.result, status=output.status, dmesg=output.dmesg,
            broken_frames=tuple(f"{b.name}: {b.reason}" for b in output.broken),
            system_map=system_map(kernel))
        _save_frames(output, workdir)
        return Attempt(classify(evidence), result=output.result, guest_seconds=guest_seconds,
                       timeseries=series, console_log=console_path)


def ended_by_guest(output: Any) -> bool:
    """The guest got to the end of its report: whatever libvirt says, it was not cut short."""
    return output.status is not None


def _follow(guest, timeout: float, say: Progress, cancel: threading.Event | None) -> tuple[bool, dict]:
    """Wait for the guest to end (True) or the timeout (False); report its progress lines."""
    follower = serial.LineFollower(guest.console_path)
    throttle = ProgressThrottle(say)
    series: dict[str, list] = {"t_s": [], "qemu_rss_bytes": []}
    next_sample = 0.0
    while True:
        remaining = timeout - guest.guest_seconds
        ended = guest.wait(max(0.0, min(MONITOR_INTERVAL, remaining)), cancel=cancel)
        guest.sync_output()   # a remote host's console, downloaded as it grows
        for event in frames.progress_events(follower.new_lines()):
            throttle.event(event)
        now = guest.guest_seconds
        if not ended and now >= next_sample:
            rss = guest.rss_bytes()
            if rss is not None:
                series["t_s"].append(round(now, 2))
                series["qemu_rss_bytes"].append(rss)
            next_sample = now + MONITOR_INTERVAL
        if ended:
            return True, series
        if guest.guest_seconds >= timeout:
            return False, series


def _save_frames(output: Any, workdir: Path) -> None:
    """Keep the decoded frames next to the raw serial file (easier to read than base64)."""
    broken = [{"name": b.name, "reason": b.reason} for b in output.broken]
    root = workdir.resolve()
    unreadable = {error.split(":", 1)[0] for error in getattr(output, "errors", ())}
    for name, frame in output.frames.items():
        if name in unreadable:
            continue   # a result.json that is not JSON would only mislead; serial.log keeps it
        # the decoder already refuses names that are not plain words; a name is checked
        # again here because it becomes a file name, and the guest is not to be trusted
        suffix = ".json" if name in ("result", "probe", "status") else ".txt"
        target = workdir / f"{name}{suffix}"
        if not frames.valid_name(name) or target.resolve().parent != root:
            broken.append({"name": frames.safe_name(name), "reason": "not a plain file name: not saved"})
            continue
        target.write_bytes(frame.payload)
    for error in getattr(output, "errors", ()):
        broken.append({"name": error.split(":", 1)[0], "reason": error})
    if broken:
        (workdir / "broken-frames.json").write_text(json.dumps(broken, indent=2) + "\n")
