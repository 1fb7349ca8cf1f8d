"""pytest plugin of mshare-lab (registered through the ``pytest11`` entry point).

``pytest --mshare-matrix MATRIX.yaml`` turns every scenario of the matrix into a test item
named by its scenario id (``examples/ci.yaml::debian-6.1/shmem/64M/x20/ram1G#1``). An
item runs its scenario through ``mshare_lab.lab.runner.run_scenario`` in its setup,
stores the run in the results store and, as the test, checks the scenario's
expectations: an unmet expectation is a test failure that lists each one; an
``infra-error`` (libvirt, QEMU, the host) is a test *error*, never a kernel failure.

Session fixtures, labgrid style, for engineers' own tests: ``mshare_lab_driver`` (one
LibvirtDriver for the session) and ``mshare_lab_store`` (the ResultStore).

Without ``--mshare-matrix`` the plugin only adds its options and fixtures: it loads in
every pytest run of the project, so importing it must stay cheap and do nothing.
Running a scenario is the ``pytest_mshare_run_scenario`` hook; a conftest can implement
it to execute scenarios differently (the plugin's own tests do, see there).
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from .errors import InfraError, LabError, UserError
from .lab.record import RunRecord
from .lab.scenario import Scenario

INFRA_OUTCOME = "infra-error"


# --- options and the executor hook -----------------------------------------------------

class _Hooks:
    @pytest.hookspec(firstresult=True)
    def pytest_mshare_run_scenario(self, config: pytest.Config, scenario: Scenario, workdir: Path,
                                   progress: Callable[..., None]) -> RunRecord:
        """Execute one scenario and return its RunRecord (first non-None result wins)."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_Hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mshare-lab", "mshare-lab scenario matrix")
    group.addoption("--mshare-matrix", metavar="MATRIX.yaml", default=None,
                    help="run every scenario of this matrix file as a test item")
    group.addoption("--mshare-results", metavar="FILE|URL", default=None,
                    help="results store the runs go to: a SQLite file or a postgresql:// URL "
                         "(default: <lab home>/results.sqlite)")
    group.addoption("--mshare-uri", metavar="URI", default=None,
                    help="libvirt URI the guests run under (default: the lab's, qemu:///system for root)")
    group.addoption("--mshare-kernel", metavar="NAME|PATH", default=None,
                    help="kernel every scenario and the mshare_lab fixture run on: a registered kernel, or a "
                         "kernel source (directory, tarball, git repo) built first (a cache hit when built)")


# --- session state: created lazily, closed at the end ----------------------------------

class LabSession:
    """What the plugin shares across one pytest session; nothing is opened until used."""

    def __init__(self, config: pytest.Config):
        self.config = config
        matrix = config.getoption("mshare_matrix")
        self.matrix_path = Path(matrix).resolve() if matrix else None
        results = config.getoption("mshare_results")
        from .results.location import results_location
        self.results = results_location(results)   # a file, or a postgresql:// URL
        self.uri = config.getoption("mshare_uri")
        self.kernel_spec: str | None = config.getoption("mshare_kernel")
        self._kernel_ready = False
        self._store = None
        self._driver = None
        self._workdir: Path | None = None

    def store(self):
        if self._store is None:
            from .results.store import ResultStore
            self._store = ResultStore(self.results)
        return self._store

    def driver(self):
        if self._driver is None:
            from .guest.libvirt_driver import LibvirtDriver
            self._driver = LibvirtDriver(self.uri)
        return self._driver

    def workdir(self, scenario: Scenario) -> Path:
        """Where a scenario keeps its artifacts (the stored run points at its console log).

        Not created here: the runner creates it and removes it again when the run is
        interrupted, which it only does for a directory it created itself.
        """
        if self._workdir is None:
            from .paths import runs_dir
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            self._workdir = runs_dir() / f"pytest-{stamp}-{os.getpid()}"
        return self._workdir / re.sub(r"[^A-Za-z0-9._-]+", "_", scenario.scenario_id)

    def kernel_name(self) -> str | None:
        """The --mshare-kernel as a kernel name (a source path becomes ``pytest-<its name>``),
        without building: collection names items by it."""
        spec = self.kernel_spec
        if spec is None:
            return None
        from .kernel import store
        if spec in store.names():
            return spec
        stem = re.sub(r"\.tar(\.\w+)?$|\.tgz$", "", Path(spec).name.rstrip("/")) or "kernel"
        return "pytest-" + re.sub(r"[^A-Za-z0-9._-]+", "-", stem)

    def ensure_kernel(self) -> str | None:
        """Build the --mshare-kernel source once per session (a cache hit when built before)."""
        name = self.kernel_name()
        if name is None or self._kernel_ready or name == self.kernel_spec:
            self._kernel_ready = True
            return name
        from .kernel.build import BuildRequest, build_kernel
        from .kernel.progress import stderr_progress
        build_kernel(BuildRequest(source=self.kernel_spec, name=name), stderr_progress)
        self._kernel_ready = True
        return name

    def close(self) -> None:
        # the driver's close tears down whatever guest an interrupted run left
        try:
            if self._driver is not None:
                try:
                    self._driver.remove_scratch()    # per-run initrd copies and overlays
                finally:
                    self._driver.close()
        finally:
            self._driver = None
            if self._store is not None:
                self._store.close()
                self._store = None


_SESSION = pytest.StashKey[LabSession]()


def lab_session(config: pytest.Config) -> LabSession:
    if _SESSION not in config.stash:
        config.stash[_SESSION] = LabSession(config)
    return config.stash[_SESSION]


def pytest_configure(config: pytest.Config) -> None:
    # scenario items carry these marks; declared here too for projects that use the plugin
    config.addinivalue_line("markers", "vm: boots a real guest under libvirt/QEMU")
    config.addinivalue_line("markers", "slow: takes more than a minute")
    session = lab_session(config)
    if session.matrix_path is None:
        return
    # `pytest --mshare-matrix m.yaml` alone runs the matrix only, not the whole testpaths;
    # with explicit paths the matrix runs as well as them
    matrix = str(session.matrix_path)
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args = [matrix]
    elif not any(_covers(Path(arg.split("::")[0]), session.matrix_path) for arg in config.args):
        config.args = [*config.args, matrix]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION in config.stash:
        config.stash[_SESSION].close()


def _covers(arg: Path, target: Path) -> bool:
    arg = arg.resolve()
    return arg == target or arg in target.parents


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def mshare_lab_driver(pytestconfig: pytest.Config):
    """The session's LibvirtDriver (--mshare-uri); closed when the session ends."""
    return lab_session(pytestconfig).driver()


@pytest.fixture(scope="session")
def mshare_lab_store(pytestconfig: pytest.Config):
    """The session's ResultStore (--mshare-results)."""
    return lab_session(pytestconfig).store()


class LabResult:
    """One scenario's result for a developer's own assertions: ``r.pte_ratio``, ``r.outcome``.

    Attributes of the RunRecord come first; any other name is a workload metric
    (``r.metric("latency_us.p99")`` for nested ones). A metric the run did not produce is
    an AttributeError naming the ones it did, not a silent None.
    """

    def __init__(self, record: RunRecord):
        self.record = record

    def __getattr__(self, name: str) -> Any:
        record = self.__dict__["record"]
        if hasattr(record, name):
            return getattr(record, name)
        value = record.metric(name)
        if value is None:
            known = ", ".join(sorted((record.result or {}).keys())) or "none (no workload result)"
            raise AttributeError(f"run {record.run_id} ({record.outcome}) has no metric {name!r}; it has: {known}")
        return value

    def __repr__(self) -> str:
        return f"<LabResult {self.record.scenario_id} {self.record.outcome}>"


@pytest.fixture
def mshare_lab(pytestconfig: pytest.Config, request: pytest.FixtureRequest) -> Callable[..., LabResult]:
    """Run one scenario and get its result: ``mshare_lab(mechanism="shmem", sga="64M", clients=20)``.

    Keys are the matrix's (``mechanism``/``mechanisms``, ``sga``, ``clients``, ``ram``,
    ``duration``, ``expect``, ``image``...), validated as a one-scenario matrix would be;
    ``kernel`` defaults to --mshare-kernel, else the lab's stock ``debian-6.1``. The run is
    stored in the results store. An infra error fails the test as an error of the lab, an
    unmet ``expect`` is an assertion failure listing each expectation.
    """
    lab = lab_session(pytestconfig)

    def run(*, kernel: str | None = None, **keys: Any) -> LabResult:
        from .lab.single import one_scenario
        scenario = one_scenario(kernel or lab.ensure_kernel() or "debian-6.1", keys,
                                where=f"mshare_lab({request.node.nodeid})")
        record = _run_and_store(pytestconfig, lab, scenario)
        if record.expectation_failures:
            raise ExpectationsNotMet(record)
        return LabResult(record)

    return run


def _run_and_store(config: pytest.Config, lab: LabSession, scenario: Scenario) -> RunRecord:
    """Execute through the hook, judge by the scenario's expectations, store; as the items do."""
    from .lab.expectations import check
    started = time.time()
    try:
        record = config.hook.pytest_mshare_run_scenario(
            config=config, scenario=scenario, workdir=lab.workdir(scenario),
            progress=_progress_printer(config, scenario))
    except InfraError as exc:
        record = RunRecord(scenario, INFRA_OUTCOME, reason=str(exc), started_at=started, finished_at=time.time())
    except UserError as exc:
        pytest.fail(f"mshare-lab: {exc}", pytrace=False)
    if record.outcome != INFRA_OUTCOME:
        record.expectation_failures = check(scenario.expect, record)
    lab.store().add(record)
    if record.outcome == INFRA_OUTCOME:
        pytest.fail(f"infra-error, not a kernel result (run {record.run_id}): {record.reason}", pytrace=False)
    return record


# --- collection ----------------------------------------------------------------------------

def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    session = lab_session(parent.config)
    if session.matrix_path is not None and file_path.resolve() == session.matrix_path:
        return MatrixFile.from_parent(parent, path=file_path)
    return None


class MatrixFile(pytest.File):
    """The matrix file as a pytest collector: one ScenarioItem per scenario."""

    def collect(self):
        from .lab import matrix
        loaded = matrix.load(self.path)
        kernel = lab_session(self.config).kernel_name()
        for scenario in loaded.scenarios:
            if kernel is not None:
                # --mshare-kernel: the matrix runs on the developer's kernel instead
                scenario = dataclasses.replace(scenario, kernel=kernel)
            item = ScenarioItem.from_parent(self, name=scenario.scenario_id, scenario=scenario)
            # scenario items boot guests: `-m "not vm"` deselects them like any VM test
            item.add_marker(pytest.mark.vm)
            item.add_marker(pytest.mark.slow)
            name = loaded.names.get(scenario.scenario_id)
            if name:
                item.keywords[name] = True
            yield item

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, LabError):
            return f"mshare-lab: {excinfo.value}"     # file:line and the fix, no traceback
        return super().repr_failure(excinfo, style=style)


class ExpectationsNotMet(AssertionError):
    def __init__(self, record: RunRecord):
        self.record = record
        super().__init__(failure_text(record))


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Scenario, **kwargs: Any):
        super().__init__(**kwargs)
        self.scenario = scenario
        self.record: RunRecord | None = None
        self.keywords[scenario.kernel] = True
        self.keywords[scenario.workload.mechanism] = True

    def setup(self) -> None:
        # the run is the setup: if the machinery fails the item is an ERROR, not a FAILURE
        lab = lab_session(self.config)
        lab.ensure_kernel()
        record = self._execute(lab)
        from .lab.expectations import check
        if record.outcome != INFRA_OUTCOME:
            record.expectation_failures = check(self.scenario.expect, record)
        run_id = lab.store().add(record)
        self.record = record
        self.user_properties.append(("run_id", run_id))
        self.user_properties.append(("outcome", record.outcome))
        if record.outcome == INFRA_OUTCOME:
            # pytrace=False: the reason is the report, a plugin traceback would bury it
            pytest.fail(f"infra-error, not a kernel result (run {run_id}): {record.reason}", pytrace=False)

    def _execute(self, lab: LabSession) -> RunRecord:
        started = time.time()
        try:
            record = self.config.hook.pytest_mshare_run_scenario(
                config=self.config, scenario=self.scenario, workdir=lab.workdir(self.scenario),
                progress=_progress_printer(self.config, self.scenario))
        except InfraError as exc:
            # the runner should return an infra-error record; a raised one is kept the same way
            record = RunRecord(self.scenario, INFRA_OUTCOME, reason=str(exc), started_at=started,
                               finished_at=time.time())
        except UserError as exc:
            # a missing kernel or a host limit: nothing ran, so nothing is stored
            pytest.fail(f"mshare-lab: {exc}", pytrace=False)
        if not isinstance(record, RunRecord):
            raise TypeError(f"pytest_mshare_run_scenario returned {type(record).__name__}, not a RunRecord")
        return record

    def runtest(self) -> None:
        if self.record is not None and self.record.expectation_failures:
            raise ExpectationsNotMet(self.record)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, (ExpectationsNotMet, LabError)):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"scenario {self.scenario.scenario_id}"


def failure_text(record: RunRecord) -> str:
    """What a failing scenario item prints: the outcome, then each unmet expectation."""
    lines = [f"scenario {record.scenario_id} (run {record.run_id}): outcome {record.outcome}"
             + (f": {record.reason}" if record.reason else "")]
    lines += [f"  - {failure}" for failure in record.expectation_failures]
    if record.console_log:
        lines.append(f"  console: {record.console_log}")
    return "\n".join(lines)


def _progress_printer(config: pytest.Config, scenario: Scenario) -> Callable[..., None]:
    """Short live lines on the terminal while a guest runs, through pytest's capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def progress(*parts: Any, **fields: Any) -> None:
        if reporter is None:
            return
        text = " ".join(str(p) for p in parts)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"[{scenario.scenario_id}] {text}".rstrip()
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    return progress


@pytest.hookimpl(trylast=True)
def pytest_mshare_run_scenario(config: pytest.Config, scenario: Scenario, workdir: Path,
                               progress: Callable[..., None]) -> RunRecord:
    """The default executor: the lab runner on the session's libvirt driver."""
    from .lab import runner
    return runner.run_scenario(scenario, driver=lab_session(config).driver(), progress=progress,
                               workdir=workdir)
