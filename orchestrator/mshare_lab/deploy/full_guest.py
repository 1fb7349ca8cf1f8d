"""Run one scenario in a full Debian guest: boot, wait for SSH, play, collect, tear down.

The micro path streams its results over a serial port; a full guest is a normal machine
reached over SSH, so here Ansible does the work (ansible/site.yml) and fetches the same
result document (schema ``mshare-lab/result``) into the run's artifacts dir. The record
returned is the same ``RunRecord`` the micro path produces, so the runner and the results
store cannot tell the paths apart except by ``scenario.guest.image``.

Infrastructure failures (the guest never answers SSH, libvirt refuses, a task of the
play fails for a reason of the lab's own) raise an ``InfraError``; what the kernel under
test did (completed, oom, unsupported, a panic or a hang) is returned as the outcome.
Whatever happens, the guest, its overlay disk and every ansible/ssh process are gone
when ``run`` returns or raises.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import InfraError, LabError, ProvisionError
from ..guest.domain import Disk, DomainSpec, PortForward, free_port, owner_metadata
from ..lab.record import RunRecord
from ..lab.scenario import Scenario
from ..lab.outcome import Evidence, classify
from ..lab.guest_input import hugepages_needed, kernel_flags, system_map, workload_args
from ..lab.guest_kind import Attempt
from ..lab.outcome import Classification
from . import discovery
from .ansible import GuestUnreachableError, PlaybookError, run_playbook
from .fabric_ops import gather_failure_logs, wait_for_ssh
from .target import SshTarget, write_known_hosts

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: TCG boots a Debian guest to sshd in about 30 s on an idle host; allow for a busy one
SSH_TIMEOUT = 300.0
#: the play's own work around the workload (prepare, copy, collect) on a slow guest
PLAY_OVERHEAD = 600.0
#: the task of ansible/roles/run_workload that runs the workload (its rc and msg are read)
RUN_TASK = "Run the workload"


class FullGuest:
    """``image: debian``: the guest kind of a full Debian machine reached over SSH.

    It runs on local hosts only: the guest's sshd is forwarded to 127.0.0.1 of the host
    that runs QEMU, and its overlay disk is written by the guest, so neither reaches a
    remote host through libvirt's protocol alone (docs/lab.md says what that would take)."""

    image = "debian"

    def __init__(self) -> None:
        self._image = None
        self._binary = None

    def runs_on(self, driver: Any) -> str | None:
        if driver.remote:
            return "a Debian guest is reached over SSH on the host's 127.0.0.1: local hosts only"
        return None

    def prepare(self, scenarios: list, progress: Progress) -> None:
        if self._image is None:
            from ..image import debian
            self._image = debian.build(progress)
        if self._binary is None:
            from ..workload.build import ensure_binary
            self._binary = ensure_binary()

    def attempt(self, scenario: Scenario, kernel: Any, driver: Any, workdir: Path, progress: Progress,
                cancel: Any, wait_for_memory: bool) -> Attempt:
        self.prepare([scenario], progress)
        try:
            record = run(scenario, kernel, driver, workdir, progress, image=self._image, binary=self._binary)
        except InfraError as exc:
            return Attempt(Classification("infra-error", str(exc), retry=True))
        return Attempt(Classification(record.outcome, record.reason, kernel_log=record.kernel_log),
                       result=record.result, guest_seconds=record.guest_seconds,
                       kernel_metadata=record.kernel_metadata, console_log=Path(record.console_log))


@dataclass(frozen=True)
class BootChoice:
    """Which kernel the guest boots: the image's own, or a kernel artifact's."""

    kernel: Path
    initrd: Path | None
    release: str
    metadata: dict[str, Any]


def choose_boot(image: Any, kernel: Any | None) -> BootChoice:
    """The image's kernel when no artifact is named or it is the same release (its modules
    are in the image); else the artifact's kernel (and its initrd when it has one)."""
    image_release = _image_release(image)
    if kernel is None or kernel.release == image_release:
        metadata = dict(kernel.metadata) if kernel is not None else {"release": image_release,
                                                                    "kind": "debian-image"}
        return BootChoice(Path(image.kernel), Path(image.initrd), image_release, metadata)
    return BootChoice(Path(kernel.bzimage), kernel.initrd, kernel.release, dict(kernel.metadata))


def _image_release(image: Any) -> str:
    try:
        return (Path(image.kernel).parent / "release").read_text().strip()
    except OSError:
        return ""


def run(scenario: Scenario, kernel: Any | None, driver: Any, workdir: Path,
        progress: Progress | None = None, *, ssh_timeout: float = SSH_TIMEOUT,
        image: Any | None = None, binary: Path | None = None) -> RunRecord:
    """Execute ``scenario`` in a Debian guest; ``kernel`` is a KernelArtifact or None.

    ``image`` (a DebianImage) and ``binary`` (the static mshare-sga) default to the
    builders of their areas; tests pass them to stand in for a broken guest.
    Raises an InfraError when the lab could not run the scenario (the guest never
    answered SSH, libvirt refused, the play failed for a reason of its own).
    """
    say = progress or (lambda line: None)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)   # libvirt's qemu user writes the console file here
    if image is None:
        from ..image import debian
        image = debian.build(progress)
    if binary is None:
        from ..workload.build import ensure_binary
        binary = ensure_binary()
    boot = choose_boot(image, kernel)
    probe_args = kernel_flags(kernel.mechanisms) if kernel is not None else []
    started = time.time()

    name = driver.new_name()
    overlay = Path(driver.scratch_dir()) / f"{name}.qcow2"
    port = free_port()
    target = SshTarget(name=name, host="127.0.0.1", port=port, key=Path(image.ssh_private_key),
                       known_hosts=write_known_hosts(workdir / "ssh" / "known_hosts",
                                                     [("127.0.0.1", port, image.host_public_key)]))
    console = workdir / "console.log"
    try:
        image.overlay(overlay)
        spec = DomainSpec(
            name=name, memory=scenario.guest.memory, vcpus=scenario.guest.vcpus,
            kernel=boot.kernel, initrd=boot.initrd, cmdline=image.cmdline,
            console_path=console, domain_type=driver.probe_domain_type(),
            hugepage_backing=scenario.guest.hugepage_backing,
            disks=(Disk(overlay, "qcow2"),), forwards=(PortForward(port, 22),),
            metadata=owner_metadata(driver.run_id, files=(overlay,)),
        )
        say(f"boot {name} ({spec.domain_type}, {boot.release}, ssh on {target.address})")
        with driver.boot(spec) as guest:
            discovery.annotate(driver.conn.lookupByName(name), target)
            try:
                wait_for_ssh(target, timeout=ssh_timeout, progress=say, alive=lambda: not guest.poll())
                played = _play(scenario, target, workdir, binary, probe_args, say)
            except LabError:
                _gather(target, guest, workdir, console)
                raise
            evidence = _evidence(played, guest, scenario, console)
            if kernel is not None:
                # the lab's own kernel: its System.map names a crash's function
                evidence = dataclasses.replace(evidence, system_map=system_map(kernel))
            verdict = classify(evidence)
            if verdict.outcome != "completed":
                _gather(target, guest, workdir, console)
            guest_seconds = guest.guest_seconds
    finally:
        overlay.unlink(missing_ok=True)   # also when boot() never ran
    if verdict.outcome == "infra-error":
        # the lab's machinery failed, not the kernel: the runner retries once
        raise ProvisionError(f"{scenario.scenario_id} on {name}: {verdict.reason}")
    say(f"{verdict.outcome}" + (f": {verdict.reason.splitlines()[0]}" if verdict.reason else ""))
    return RunRecord(
        scenario=scenario, outcome=verdict.outcome, reason=verdict.reason, kernel_metadata=boot.metadata,
        result=played.result, console_log=str(console), artifacts_dir=str(workdir),
        started_at=started, finished_at=time.time(), guest_seconds=guest_seconds,
        kernel_log=verdict.kernel_log,
    )


@dataclass
class _Played:
    """What the play left: the documents it fetched and how the workload task ended."""

    result: dict | None
    kernel_log: str | None
    run_task: dict
    unreachable: GuestUnreachableError | None = None


def _play(scenario: Scenario, target: SshTarget, workdir: Path, binary: Path,
          probe_args: list[str], say: Progress) -> _Played:
    """Run ansible/site.yml; a failed task that left no result is the lab's error."""
    collected = workdir / "collected"
    extravars = {
        "deploy_workload_binary": str(binary),
        "run_workload_args": workload_args(scenario.workload),   # the role adds probe_args
        "run_workload_probe_args": probe_args,
        "run_workload_timeout": int(scenario.guest.timeout),
        "prepare_nr_hugepages": hugepages_needed(scenario.workload) or 0,
        "collect_dest": str(collected),
    }
    failure: PlaybookError | GuestUnreachableError | None = None
    played = None
    try:
        played = run_playbook([target], workdir=workdir / "ansible", extravars=extravars, progress=say,
                              timeout=scenario.guest.timeout + PLAY_OVERHEAD, ident="run-scenario")
    except (PlaybookError, GuestUnreachableError) as exc:
        failure, played = exc, exc.result
    host_dir = collected / target.name
    result = _read_json(host_dir / "result.json")
    if result is not None:
        result = _validated(result, host_dir / "result.json")
    run_task = (played.task_result(target.name, RUN_TASK) if played else None) or {}
    timed_out = "did not complete within" in str(run_task.get("msg", ""))
    unreachable = failure if isinstance(failure, GuestUnreachableError) else None
    if failure is not None and result is None and unreachable is None and not timed_out:
        raise failure
    return _Played(result, _read_text(host_dir / "kernel.log") or None, run_task, unreachable)


def _evidence(played: _Played, guest: Any, scenario: Scenario, console: Path) -> Evidence:
    """The same evidence the micro path classifies, from what a full guest left."""
    ended_by_itself = guest.poll()
    finished = played.result is not None or ended_by_itself
    return Evidence(
        ended=finished, end_reason=guest.end_reason,
        ended_by_infra=ended_by_itself and guest.ended_by_infra and played.result is None,
        timeout=scenario.guest.timeout, console=_read_text(console),
        result=played.result, dmesg=played.kernel_log,
    )


def _gather(target: SshTarget, guest: Any, workdir: Path, console: Path) -> None:
    gather_failure_logs(None if guest.poll() else target, workdir / "failure", console=console)


def _validated(result: dict, path: Path) -> dict:
    """The document through the workload area's model when it is importable."""
    try:
        from ..workload.result import WorkloadResult
    except ImportError:
        return result
    try:
        return json.loads(WorkloadResult.from_json(path.read_text()).to_json())
    except (ValueError, KeyError, TypeError) as exc:
        raise PlaybookError(f"{path} is not a valid mshare-lab/result document: {exc}") from exc


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
