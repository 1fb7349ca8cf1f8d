"""Execute scenarios on the lab's hosts and turn what the guests left into run records.

The runner knows two small interfaces: a guest kind (``lab.guest_kind``: micro or full
Debian) boots and collects one attempt of a scenario, and a host (``fleet.host``) gives a
driver, its capacity and its record. ``run_scenario`` runs one scenario on one driver
with the retry logic (infra failures are retried once and never become a kernel result);
``run_matrix`` places a whole matrix on the hosts by fit (``fleet.placement``), largest
first, moves the scenarios of a host that fails mid-run to the others, stores each
record and checks its expectations as it finishes.

Nothing outlives a scenario: the guest, its per-run files (on whichever host) and (when
the run is interrupted) its half-written artifacts are removed on every way out.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import paths
from ..errors import NotFoundError
from ..guest import console as serial
from ..guest.libvirt_driver import LibvirtDriver, new_run_id
from . import expectations
from .guest_input import hugepages_needed, kernel_flags, resolve_kernel, system_map, workload_args  # noqa: F401
from .guest_kind import Attempt, GuestKind, guest_kind
from .progress import LiveBoard
from .record import RunRecord
from .scenario import Scenario

if TYPE_CHECKING:
    from ..fleet.host import Host
    from ..fleet.lab_file import LabFile
    from ..results.store import ResultStore
    from .matrix import Matrix

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: how many times a scenario is started at most when the machinery fails
MAX_ATTEMPTS = 2


def _quiet(_line: str) -> None:
    pass


# --- one scenario --------------------------------------------------------------------------

class HostLost(Exception):
    """The host went away under the scenario: run it again on another host."""

    def __init__(self, attempt: Attempt, attempts: int):
        super().__init__(attempt.classification.reason)
        self.attempt = attempt
        self.attempts = attempts


def run_scenario(scenario: Scenario, *, driver: LibvirtDriver, progress: Progress | None = None,
                 workdir: Path, cancel: threading.Event | None = None,
                 max_attempts: int = MAX_ATTEMPTS, wait_for_memory: bool = False,
                 base_initrd: Path | None = None, kind: GuestKind | None = None,
                 host: "Host | None" = None) -> RunRecord:
    """Run one scenario to a RunRecord on ``driver``; infra failures are retried once.

    ``kind`` is the scenario's guest kind (made from ``scenario.guest.image`` when not
    given); ``base_initrd`` replaces the micro base image: tests boot a misbehaving guest
    with it. With ``host``, an infra failure that left the host unreachable raises
    ``HostLost`` instead of retrying there, so the matrix can move the scenario.

    Raises a UserError when the scenario cannot run at all (unknown kernel, more RAM than
    the host has) and KeyboardInterrupt when interrupted (after cleaning up).
    """
    say = progress or _quiet
    workdir = Path(workdir)
    created = not workdir.exists()
    started = time.time()
    if kind is None:
        kind = guest_kind(scenario.guest.image, **({"base": base_initrd} if base_initrd is not None else {}))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)   # virtlogd writes the serial files; the qemu user traverses
        kernel = resolve_kernel(scenario.kernel, say)
        attempts = 0
        while True:
            attempts += 1
            attempt = kind.attempt(scenario, kernel, driver, workdir, say, cancel, wait_for_memory)
            cls = attempt.classification
            if cls.outcome == "infra-error" and host is not None and not host.alive():
                host.mark_down(f"libvirt connection to {host.driver.display_uri} lost: "
                               f"{host.driver.last_error or 'no answer'}")
                _keep_failed_attempt(workdir, f"{host.name}-{attempts}")
                raise HostLost(attempt, attempts)
            if cls.outcome == "infra-error" and cls.retry and attempts < max_attempts:
                say(f"infra error, retrying once: {_first_line(cls.reason)}")
                _keep_failed_attempt(workdir, attempts)
                continue
            break
        say(cls.outcome + (f": {_first_line(cls.reason)}" if cls.reason else ""))
        console_log = attempt.console_log or workdir / "console.log"
        return RunRecord(
            scenario=scenario, outcome=cls.outcome, reason=cls.reason,
            kernel_metadata=dict(attempt.kernel_metadata if attempt.kernel_metadata is not None
                                 else kernel.metadata),
            result=attempt.result, timeseries=attempt.timeseries or {},
            console_log=str(console_log), artifacts_dir=str(workdir),
            started_at=started, finished_at=time.time(), guest_seconds=attempt.guest_seconds,
            attempts=attempts, kernel_log=cls.kernel_log,
            host=_host_record(host, driver))
    except KeyboardInterrupt:
        if created:
            # an interrupted run is no result: leave no half-written artifacts either
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _host_record(host: "Host | None", driver: LibvirtDriver) -> dict | None:
    """The record of the host that ran it (a bare driver is described as host 'local')."""
    from ..errors import InfraError
    from ..fleet.host import describe
    try:
        return (host.record() if host is not None else describe(driver, "local")).to_dict()
    except InfraError as exc:   # the host went away after the guest ended: keep the result
        log.warning("no host record: %s", exc)
        return None


def _keep_failed_attempt(workdir: Path, attempt: int | str) -> None:
    for name in ("console.log", "serial.log"):
        path = workdir / name
        for part in serial.rotated_parts(path):
            part.rename(part.with_name(f"attempt{attempt}-{part.name}"))


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0][:160] if (text or "").strip() else ""


# --- a matrix -------------------------------------------------------------------------------

def run_matrix(matrix: "Matrix", *, store: "ResultStore", parallel: int = 1, progress: Progress | None = None,
               driver: LibvirtDriver | None = None, uri: str | None = None,
               runs_root: Path | None = None, lab: "LabFile | None" = None,
               hosts: "list[Host] | None" = None) -> list[RunRecord]:
    """Run every scenario of ``matrix`` on the lab's hosts, store and check each record.

    The hosts are ``hosts`` (tests keep them to read their counters), else the lab file's
    (``lab``), else one local host on ``uri`` (or on ``driver``). ``parallel`` is per host
    unless the lab file sets it. Returns the records in matrix order. Ctrl-C/SIGTERM: the
    running guests on every host are torn down, nothing of the interrupted scenarios is
    stored, KeyboardInterrupt propagates.
    """
    from ..fleet.host import Host, hosts_for
    from ..fleet.lab_file import HostSpec, default_lab
    from ..fleet.placement import Placement, largest_first, refuse_unplaceable
    say = progress or _quiet
    own_hosts = hosts is None
    if hosts is None:
        if driver is not None:
            hosts = [Host(HostSpec(name="local", uri=driver.display_uri), run_id=driver.run_id, parallel=parallel,
                          driver=driver)]
        else:
            hosts = hosts_for(lab or default_lab(uri), run_id=new_run_id(), parallel=parallel)
    run_id = hosts[0].driver.run_id
    runs_root = runs_root or paths.runs_dir() / run_id
    scenarios = list(matrix.scenarios)
    board = LiveBoard(len(scenarios), say)
    cancel = threading.Event()
    records: dict[int, RunRecord] = {}
    kinds = {image: guest_kind(image) for image in sorted({s.guest.image for s in scenarios})}
    placement = Placement(hosts, unsuitable=lambda host, scenario: kinds[scenario.guest.image].runs_on(host.driver))
    try:
        # what no guest could hold is refused before the first boot (numbers, what fits)
        check_feasible(scenarios, store, say)
        _preflight(scenarios, hosts, kinds, placement, say)
        refuse_unplaceable(placement, scenarios)
        board.start()
        failures: dict[int, list[dict]] = {}

        def one(index: int, scenario: Scenario, host: "Host") -> RunRecord:
            try:
                board.phase(index, scenario.scenario_id, f"start on {host.name}" if len(hosts) > 1 else "start")
                workdir = runs_root / f"{index + 1:03d}-{_slug(scenario.scenario_id)}"
                record = run_scenario(scenario, driver=host.driver, workdir=workdir, cancel=cancel,
                                      progress=lambda line: board.phase(index, scenario.scenario_id, line),
                                      wait_for_memory=host.parallel > 1, kind=kinds[scenario.guest.image],
                                      host=host)
            finally:
                placement.release(host, scenario)
            record.host_failures = failures.get(index, [])
            record.expectation_failures = expectations.check(scenario.expect, record)
            _store_or_keep(store, record, scenario, workdir, say)
            board.done(index, scenario.scenario_id, record)
            return record

        waiting = largest_first(scenarios)
        workers = sum(h.parallel for h in hosts)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="scenario") as pool:
            running: dict[Future, tuple[int, "Host"]] = {}
            try:
                while waiting or running:
                    waiting = _dispatch(waiting, scenarios, placement, pool, running, one, records, say)
                    if not running:
                        continue
                    # a timeout keeps the main thread responsive to Ctrl-C
                    finished, _ = wait(set(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index, host = running.pop(future)
                        try:
                            records[index] = future.result()
                        except HostLost:
                            down = host.down
                            at, why = (down.at, down.reason) if down else (time.time(), "lost")
                            failures.setdefault(index, []).append(
                                {"host": host.name, "uri": host.driver.display_uri, "at": at, "reason": why})
                            say(f"host {host.name} failed at {_clock(at)} ({why}): "
                                f"{scenarios[index].scenario_id} goes to another host")
                            waiting = sorted(waiting + [index], key=largest_first(scenarios).index)
            except BaseException:
                # stop the workers: queued scenarios never start, running ones unwind
                # through their cleanup (their wait loops raise on cancel)
                cancel.set()
                for future in running:
                    future.cancel()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        for host in hosts:
            if host.down is not None:
                _clean_down_host(host, say)
        _say_hosts(hosts, say)
    finally:
        board.stop()
        _remove_if_empty(runs_root)
        if own_hosts:
            for host in hosts:
                if host.driver is driver:
                    host.driver.remove_scratch()   # the caller's driver: the caller closes it
                else:
                    host.close()
    return [records[i] for i in sorted(records)]


def _dispatch(waiting: list[int], scenarios: list[Scenario], placement, pool, running: dict,
              one, records: dict, say: Progress) -> list[int]:
    """Start every waiting scenario a host has room for now; returns those still waiting.

    A scenario that no host that is still up can ever hold (its hosts went down) ends as
    infra-error here, so the matrix still finishes."""
    still: list[int] = []
    for index in waiting:
        scenario = scenarios[index]
        if not placement.candidates(scenario):
            down = [h.name for h in placement.hosts if h.down is not None]
            records[index] = _no_host_record(scenario, down)
            say(f"{scenario.scenario_id}: infra-error: no host left that can run it (down: {', '.join(down)})")
            continue
        host = placement.acquire(scenario)
        if host is None:
            still.append(index)
            continue
        running[pool.submit(one, index, scenario, host)] = (index, host)
    if still and len(still) == len(waiting) and not running:
        time.sleep(0.5)   # nothing could start and nothing runs: capacity frees up outside the lab
    return still


def _no_host_record(scenario: Scenario, down: list[str]) -> RunRecord:
    now = time.time()
    return RunRecord(scenario=scenario, outcome="infra-error",
                     reason=f"no host left that can run it: {', '.join(down)} down",
                     started_at=now, finished_at=now, attempts=0)


def _clean_down_host(host: "Host", say: Progress) -> None:
    """One more try to reach a host that failed: remove what this run left there.

    libvirtd destroyed the guests itself when the connection dropped (AUTODESTROY); their
    definitions and per-run volumes wait for a connection. When the host is still away,
    ``mshare-lab gc --lab`` removes them once it answers (their owner, this run, is gone)."""
    from ..guest.domain import DOMAIN_PREFIX
    from ..errors import InfraError
    driver = host.driver
    driver.close()
    driver.files.reconnected()   # its pool handle held the dead connection
    try:
        left = [(name, meta) for name, meta, _ in driver.lab_domains() if meta and meta.run_id == driver.run_id]
        for name, meta in left:
            driver.teardown(name, meta.files)
        volumes = getattr(driver.files, "volumes", None)
        if volumes is not None:
            volumes.delete_run_volumes(f"{DOMAIN_PREFIX}{driver.run_id}-")
        say(f"host {host.name} answers again: removed the {len(left)} guest definition(s) this run left there")
    except (InfraError, OSError) as exc:
        say(f"host {host.name} is still unreachable ({_first_line(str(exc))}): what this run left there "
            f"(stopped guests, per-run volumes) is removed by 'mshare-lab gc --lab' once it answers")
    except Exception as exc:   # libvirt's own errors on a half-dead connection
        say(f"host {host.name}: cleanup failed ({_first_line(str(exc))}); run 'mshare-lab gc --lab' later")


def _say_hosts(hosts: "list[Host]", say: Progress) -> None:
    """Per host: what crossed the network into its artifact cache, and whether it failed."""
    for host in hosts:
        parts = []
        c = host.driver.files.counters
        if c is not None:
            parts.append(f"uploaded {c.uploads} artifact(s) ({c.uploaded_bytes} bytes), {c.hits} cache hit(s)")
        if host.down is not None:
            parts.append(f"DOWN since {_clock(host.down.at)}: {host.down.reason}")
        if parts:
            say(f"host {host.name}: " + "; ".join(parts))


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


#: in a scenario's run directory once its record is in the store (gc keeps such directories)
STORED_MARK = ".stored"


def _store_or_keep(store: "ResultStore", record: RunRecord, scenario: Scenario, workdir: Path,
                   say: Progress) -> None:
    """Store the record; when the store cannot take it, keep it as JSON in the run directory.

    A finished run is never lost to a broken store: it can be imported later."""
    from ..results.record_file import RECORD_FILE, write_record
    try:
        store.add(record, matrix_source=scenario.source)
        # gc keeps the directories of stored runs when it sweeps a killed matrix run
        if workdir.is_dir():
            (workdir / STORED_MARK).touch()
    except Exception as exc:   # sqlite3, psycopg, the lab's own: whatever the store raised
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


def _preflight(scenarios: list[Scenario], hosts: "list[Host]", kinds: dict[str, GuestKind], placement,
               say: Progress) -> None:
    """Fail before the first boot on what would fail every scenario: kernels, images, hosts."""
    for name in sorted({s.kernel for s in scenarios}):
        try:
            resolve_kernel(name, say)
        except NotFoundError as exc:
            # say which line of the matrix names it
            source = next((s.source for s in scenarios if s.kernel == name and s.source), None)
            if not source:
                raise
            raise NotFoundError(f"{source}: {exc.message}", hint=exc.hint) from exc
    for image, kind in kinds.items():
        kind.prepare([s for s in scenarios if s.guest.image == image], say)
    from ..errors import InfraError
    for host in hosts:
        try:
            record = host.record()
            capacity = host.capacity()
        except InfraError as exc:
            if len(hosts) == 1:
                raise
            host.mark_down(str(exc))
            say(f"host {host.name} is down before the start: {_first_line(str(exc))}")
            continue
        prefix = f"host {host.name}: " if len(hosts) > 1 else ""
        say(f"{prefix}guests run as domain type {'kvm' if record.accelerator == 'kvm' else 'qemu'}"
            + (f" ({record.cpu_model}, Linux {record.kernel}); room for {_gib(capacity.ram)} of guests, "
               f"{host.parallel} at a time" if len(hosts) > 1 else ""))


def _gib(num: int) -> str:
    from ..units import format_size
    return format_size(num)


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()   # only succeeds when nothing was kept in it
    except OSError:
        pass


def _slug(text: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:100]
