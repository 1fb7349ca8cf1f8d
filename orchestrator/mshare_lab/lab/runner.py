"""Execute scenarios in guests and turn what they left into run records.

``run_scenario`` runs one scenario: kernel artifact + micro initramfs (or, for
``image: debian``, the Ansible path in ``mshare_lab.deploy.full_guest``), boots it through
the libvirt driver, follows the guest's progress lines on the console, waits up to the
scenario's timeout, reads the frames from ttyS1 and classifies one outcome
(``lab.outcome``). Infrastructure failures are retried once and never become a kernel
result. ``run_matrix`` runs a whole matrix, ``parallel`` scenarios at a time within the
host's RAM, storing each record and checking its expectations as it finishes.

Nothing outlives a scenario: the guest, its per-run initrd and (when the run is
interrupted) its half-written artifacts are removed on every way out.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import frames, paths
from ..errors import InfraError, NotFoundError
from ..guest import console as serial
from ..guest.domain import DomainSpec, owner_metadata
from ..guest.libvirt_driver import LibvirtDriver
from ..options import WorkloadSpec, workload_argv
from . import expectations
from .outcome import Classification, Evidence, classify
from .progress import LiveBoard, ProgressThrottle
from .record import RunRecord
from .scenario import Scenario

if TYPE_CHECKING:
    from ..kernel.artifact import KernelArtifact
    from ..results.store import ResultStore
    from .matrix import Matrix

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: how many times a scenario is started at most when the machinery fails
MAX_ATTEMPTS = 2
#: host-side samples of QEMU's resident memory (the guest RAM it has touched)
MONITOR_INTERVAL = 1.0
HUGEPAGE_SIZE = 2 << 20


def _quiet(_line: str) -> None:
    pass


# --- what goes into the guest ------------------------------------------------------------

def workload_args(spec: WorkloadSpec) -> list[str]:
    """``mshare-sga run`` flags for a workload spec, from the one option declaration."""
    return workload_argv(spec)


def kernel_flags(mechanisms: dict[str, Any]) -> list[str]:
    """The kernel-parameter flags of a kernel (syscall numbers, ioctl ABI, MAP_SHARED_PT)."""
    from ..workload.build import kernel_flags as flags
    return list(flags(mechanisms))


def hugepages_needed(spec: WorkloadSpec) -> int | None:
    """2 MiB pages a hugetlb region needs (None for other mechanisms)."""
    if spec.mechanism != "hugetlb":
        return None
    return math.ceil(spec.sga / HUGEPAGE_SIZE)


def micro_env(scenario: Scenario, kernel: "KernelArtifact") -> dict[str, str]:
    from ..image import micro
    flags = kernel_flags(kernel.mechanisms)
    sysctls = dict(item.split("=", 1) for item in scenario.guest.sysctls)
    return micro.env_for(workload_args(scenario.workload) + flags, flags,
                         nr_hugepages=hugepages_needed(scenario.workload),
                         sysctls=sysctls or None, scenario_id=scenario.scenario_id)


def resolve_kernel(name: str, progress: Progress = _quiet) -> "KernelArtifact":
    """The named kernel artifact; the stock Debian kernel is fetched on first use."""
    from ..kernel import store
    try:
        return store.get(name)
    except NotFoundError:
        if not name.startswith("debian-"):
            raise
    from ..kernel.fetch import fetch_debian
    fetched = fetch_debian(progress)
    if fetched.name != name:
        raise NotFoundError(f"no kernel named {name!r}; the Debian kernel apt offers is {fetched.name}",
                            hint=f"use kernel: {fetched.name} or build {name} with `mshare-lab kernel build`")
    return fetched


# --- one scenario --------------------------------------------------------------------------

@dataclass
class _Attempt:
    classification: Classification
    result: dict | None = None
    guest_seconds: float = 0.0
    timeseries: dict | None = None


def run_scenario(scenario: Scenario, *, driver: LibvirtDriver, progress: Progress | None = None,
                 workdir: Path, cancel: threading.Event | None = None,
                 max_attempts: int = MAX_ATTEMPTS, wait_for_memory: bool = False,
                 base_initrd: Path | None = None) -> RunRecord:
    """Run one scenario to a RunRecord; infra failures are retried once.

    ``base_initrd`` replaces the micro image (``image.micro.build()``) as the base the
    scenario's env is appended to: tests use it to boot a guest that misbehaves.

    Raises a UserError when the scenario cannot run at all (unknown kernel, more RAM than
    the host has) and KeyboardInterrupt when interrupted (after cleaning up).
    """
    say = progress or _quiet
    workdir = Path(workdir)
    created = not workdir.exists()
    started = time.time()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)   # virtlogd writes the serial files; the qemu user traverses
        if scenario.guest.image == "debian":
            return _run_full_guest(scenario, driver, workdir, say)
        kernel = resolve_kernel(scenario.kernel, say)
        if base_initrd is None:
            from ..image import micro
            base_initrd = micro.build(say)
        attempts = 0
        while True:
            attempts += 1
            attempt = _attempt_micro(scenario, kernel, base_initrd, driver, workdir, say, cancel,
                                     wait_for_memory)
            cls = attempt.classification
            if cls.outcome == "infra-error" and cls.retry and attempts < max_attempts:
                say(f"infra error, retrying once: {_first_line(cls.reason)}")
                _keep_failed_attempt(workdir, attempts)
                continue
            break
        say(cls.outcome + (f": {_first_line(cls.reason)}" if cls.reason else ""))
        return RunRecord(
            scenario=scenario, outcome=cls.outcome, reason=cls.reason,
            kernel_metadata=dict(kernel.metadata), result=attempt.result,
            timeseries=attempt.timeseries or {},
            console_log=str(workdir / "console.log"), artifacts_dir=str(workdir),
            started_at=started, finished_at=time.time(), guest_seconds=attempt.guest_seconds,
            attempts=attempts, kernel_log=cls.kernel_log)
    except KeyboardInterrupt:
        if created:
            # an interrupted run is no result: leave no half-written artifacts either
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _run_full_guest(scenario: Scenario, driver: LibvirtDriver, workdir: Path, say: Progress) -> RunRecord:
    try:
        from ..deploy import full_guest
    except ImportError as exc:
        raise NotFoundError("image: debian scenarios need mshare_lab.deploy.full_guest, which is not installed",
                            hint="use image: micro, or install the deploy area") from exc
    kernel = resolve_kernel(scenario.kernel, say)
    attempts = 0
    while True:
        attempts += 1
        started = time.time()
        try:
            record = full_guest.run(scenario, kernel, driver, workdir, say)
            record.attempts = attempts
            return record
        except InfraError as exc:
            if attempts < MAX_ATTEMPTS:
                say(f"infra error, retrying once: {_first_line(str(exc))}")
                continue
            return RunRecord(scenario=scenario, outcome="infra-error", reason=str(exc),
                             kernel_metadata=dict(kernel.metadata), artifacts_dir=str(workdir),
                             started_at=started, finished_at=time.time(), attempts=attempts)


def _attempt_micro(scenario: Scenario, kernel: "KernelArtifact", base: Path, driver: LibvirtDriver,
                   workdir: Path, say: Progress, cancel: threading.Event | None,
                   wait_for_memory: bool) -> _Attempt:
    from ..image import micro
    name = driver.new_name()
    initrd = driver.scratch_dir() / f"{name}.initrd.gz"
    console_path = workdir / "console.log"
    serial_path = workdir / "serial.log"
    try:
        micro.scenario_initrd(base, micro_env(scenario, kernel), initrd)
        domain_type = driver.probe_domain_type()
        spec = DomainSpec(
            name=name, memory=scenario.guest.memory, vcpus=scenario.guest.vcpus,
            kernel=kernel.bzimage, initrd=initrd, cmdline=micro.MICRO_CMDLINE,
            console_path=console_path, serial_path=serial_path, domain_type=domain_type,
            hugepage_backing=scenario.guest.hugepage_backing,
            metadata=owner_metadata(driver.run_id, files=(initrd,)))
        say(f"boot {name} ({domain_type}, {kernel.release})")
        with driver.boot(spec, wait_for_memory=wait_for_memory, cancel=cancel) as guest:
            ended, series = _follow(guest, scenario.guest.timeout, say, cancel)
            if not ended:
                say(f"no end after {scenario.guest.timeout:g} s: stopping the guest")
                guest.destroy()
            guest_seconds = guest.guest_seconds
            end_reason, by_infra = guest.end_reason, guest.ended_by_infra
    except InfraError as exc:
        # libvirt refused or QEMU did not start: the machinery's fault, worth a retry
        return _Attempt(Classification("infra-error", str(exc), retry=True))
    finally:
        initrd.unlink(missing_ok=True)
    # read_guest_output stitches virtlogd's rotated parts (serial.log.0, ...) back together
    output = micro.read_guest_output(serial_path) if serial_path.exists() else micro.GuestOutput()
    evidence = Evidence(
        ended=ended, end_reason=end_reason, ended_by_infra=by_infra and not ended_by_guest(output),
        timeout=scenario.guest.timeout, console=serial.read_text(console_path),
        result=output.result, status=output.status, dmesg=output.dmesg,
        broken_frames=tuple(f"{b.name}: {b.reason}" for b in output.broken),
        system_map=system_map(kernel))
    _save_frames(output, workdir)
    return _Attempt(classify(evidence), result=output.result, guest_seconds=guest_seconds, timeseries=series)


def system_map(kernel: "KernelArtifact") -> Path | None:
    """The artifact's System.map (built kernels keep one), to name a crash's function."""
    path = Path(kernel.path) / "System.map"
    return path if path.is_file() else None


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
    import json
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


def _keep_failed_attempt(workdir: Path, attempt: int) -> None:
    for name in ("console.log", "serial.log"):
        path = workdir / name
        for part in serial.rotated_parts(path):
            part.rename(part.with_name(f"attempt{attempt}-{part.name}"))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:160] if (text or "").strip() else ""


# --- a matrix -------------------------------------------------------------------------------

def run_matrix(matrix: "Matrix", *, store: "ResultStore", parallel: int = 1, progress: Progress | None = None,
               driver: LibvirtDriver | None = None, uri: str | None = None,
               runs_root: Path | None = None) -> list[RunRecord]:
    """Run every scenario of ``matrix`` (``parallel`` at a time), store and check each record.

    Returns the records in matrix order. Ctrl-C/SIGTERM: the running guests are torn down,
    nothing of the interrupted scenarios is stored, KeyboardInterrupt propagates.
    """
    say = progress or _quiet
    own_driver = driver is None
    driver = driver or LibvirtDriver(uri)
    runs_root = runs_root or paths.runs_dir() / driver.run_id
    scenarios = list(matrix.scenarios)
    board = LiveBoard(len(scenarios), say)
    cancel = threading.Event()
    records: dict[int, RunRecord] = {}
    try:
        # what no guest could hold is refused before the first boot (numbers, what fits)
        check_feasible(scenarios, store, say)
        # one base image for the whole matrix: every scenario boots the same bits
        base = _preflight(scenarios, driver, say)
        board.start()

        def one(index: int, scenario: Scenario) -> RunRecord:
            board.phase(index, scenario.scenario_id, "start")
            workdir = runs_root / f"{index + 1:03d}-{_slug(scenario.scenario_id)}"
            record = run_scenario(scenario, driver=driver, workdir=workdir, cancel=cancel,
                                  progress=lambda line: board.phase(index, scenario.scenario_id, line),
                                  wait_for_memory=parallel > 1, base_initrd=base)
            record.expectation_failures = expectations.check(scenario.expect, record)
            _store_or_keep(store, record, scenario, workdir, say)
            board.done(index, scenario.scenario_id, record)
            return record

        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="scenario") as pool:
            futures: dict[Future, int] = {pool.submit(one, i, s): i for i, s in enumerate(scenarios)}
            try:
                pending = set(futures)
                while pending:
                    # a timeout keeps the main thread responsive to Ctrl-C
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        records[futures[future]] = future.result()
            except BaseException:
                # stop the workers: queued scenarios never start, running ones unwind
                # through their cleanup (their wait loops raise on cancel)
                cancel.set()
                for future in futures:
                    future.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        board.stop()
        driver.remove_scratch()
        _remove_if_empty(runs_root)
        if own_driver:
            driver.close()
    return [records[i] for i in sorted(records)]


#: in a scenario's run directory once its record is in the store (gc keeps such directories)
STORED_MARK = ".stored"


def _store_or_keep(store: "ResultStore", record: RunRecord, scenario: Scenario, workdir: Path,
                   say: Progress) -> None:
    """Store the record; when the store cannot take it, keep it as JSON in the run directory.

    A finished run is never lost to a broken store: it can be imported later."""
    import sqlite3
    from ..errors import LabError
    from ..results.record_file import RECORD_FILE, write_record
    try:
        store.add(record, matrix_source=scenario.source)
        # gc keeps the directories of stored runs when it sweeps a killed matrix run
        if workdir.is_dir():
            (workdir / STORED_MARK).touch()
    except (sqlite3.Error, LabError, OSError) as exc:
        workdir.mkdir(parents=True, exist_ok=True)
        kept = write_record(record, workdir / RECORD_FILE)
        log.warning("%s: the store did not take the run (%s); kept it as %s", scenario.scenario_id, exc, kept)
        say(f"the results store did not take {scenario.scenario_id} ({_first_line(str(exc))}); kept as "
            f"{kept}: add it later with 'mshare-lab results import {kept}'")


def check_feasible(scenarios: list[Scenario], store: "ResultStore | None", say: Progress = _quiet) -> None:
    """Every scenario against its guest's RAM and the kernel's process limit (LimitError).

    The per-client cost is the one measured by earlier runs of the kernel and image in
    ``store`` (``workload.calibration``), the built-in estimate when there are none."""
    from ..workload.calibration import measured_cost
    from ..workload.feasibility import ClientCost, check_scenario
    costs: dict[tuple[str, str], ClientCost] = {}
    for scenario in scenarios:
        key = (scenario.kernel, scenario.guest.image)
        if key not in costs:
            costs[key] = measured_cost(store, *key) if store is not None else ClientCost.builtin()
            say(f"client cost on {key[0]} ({key[1]}): {costs[key].describe()}")
        check_scenario(scenario, costs[key])


def _preflight(scenarios: list[Scenario], driver: LibvirtDriver, say: Progress) -> Path | None:
    """Fail before the first boot on what would fail every scenario: kernels, image, RAM.

    Returns the micro base image (None when no scenario uses it)."""
    for name in sorted({s.kernel for s in scenarios}):
        try:
            resolve_kernel(name, say)
        except NotFoundError as exc:
            # say which line of the matrix names it
            source = next((s.source for s in scenarios if s.kernel == name and s.source), None)
            if not source:
                raise
            raise NotFoundError(f"{source}: {exc.message}", hint=exc.hint) from exc
    base = None
    if any(s.guest.image == "micro" for s in scenarios):
        from ..image import micro
        base = micro.build(say)
    domain_type = driver.probe_domain_type()
    say(f"guests run as domain type {domain_type}")
    budget = driver.memory_budget()
    for scenario in scenarios:
        if not budget.fits(scenario.guest.memory) and not driver.own_active_guests():
            from ..errors import LimitError
            raise LimitError(f"{scenario.source or scenario.scenario_id}: the host cannot give this guest "
                             f"its RAM: {budget.describe(scenario.guest.memory)}",
                             hint="lower ram in the matrix or free host memory")
    return base


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()   # only succeeds when nothing was kept in it
    except OSError:
        pass


def _slug(text: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:100]
