"""``mshare-lab bisect``: git bisect run with the lab as the test.

Each step builds the commit (incrementally: ccache serves what earlier steps compiled),
boots it in a micro guest, runs one scenario and judges it by the matrix's expectation
keys: met is good (exit 0), unmet is bad (1), a commit that does not build or a guest
that had an infrastructure error is skipped (125). Anything else aborts the bisection
(exit 128) rather than being mistaken for a bad commit.

The user's repository is only read: the bisection runs in a ``--shared``, no-checkout
clone (``git bisect start --no-checkout``, the commit under test is BISECT_HEAD) and each
build makes its own private checkout, so the user's HEAD, branch, index and work tree
are untouched whatever happens, and the clone is removed at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InfraError, KernelBuildError, NotFoundError, ToolError
from ..kernel.progress import Progress, stderr_progress
from .single import one_scenario

GOOD, BAD, SKIP, ABORT = 0, 1, 125, 128
_FIRST_BAD = re.compile(r"^([0-9a-f]{40}) is the first bad commit", re.MULTILINE)


@dataclass(frozen=True)
class BisectRequest:
    repo: Path
    good: str
    bad: str
    scenario: dict[str, Any]                     # matrix keys (mechanism, sga, clients, ram...)
    expect: dict[str, Any]
    fragments: tuple[str, ...] = ()
    uri: str | None = None


@dataclass
class Evidence:
    """What one step saw: the verdict and why."""

    commit: str
    subject: str
    verdict: str                                 # good | bad | skip
    kernel: str | None = None
    outcome: str | None = None
    reason: str | None = None
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: str | None = None

    def describe(self) -> str:
        head = f"{self.commit[:12]} {self.subject!r}: {self.verdict}"
        if self.outcome:
            head += f", outcome {self.outcome}"
        lines = [head]
        seen = [f"{k} {v}" for k, v in self.metrics.items() if k != "kernel_log"]
        if seen or self.metrics.get("kernel_log"):
            lines.append("    " + "; ".join(seen + [self.metrics.get("kernel_log") or ""]).strip("; "))
        lines += [f"    - {f}" for f in self.failures]
        if self.reason and not self.failures:
            lines.append(f"    {self.reason}")
        if self.run_dir:
            lines.append(f"    run: {self.run_dir}")
        return "\n".join(lines)


@dataclass(frozen=True)
class BisectResult:
    first_bad: Evidence
    last_good: Evidence
    steps: list[Evidence]


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(f"git {' '.join(args[:2])} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def _commit(repo: Path, ref: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise NotFoundError(f"git ref {ref!r} not found in {repo}")
    return done.stdout.strip()


def scenario_for(kernel: str, request: BisectRequest):
    return one_scenario(kernel, {**request.scenario, "expect": request.expect},
                        where=f"bisect --scenario/--expect")


def judge(request: BisectRequest, commit: str, progress: Progress = stderr_progress) -> Evidence:
    """Build, boot, run and judge one commit."""
    from ..guest.libvirt_driver import LibvirtDriver
    from ..kernel.build import BuildRequest, build_kernel
    from ..paths import runs_dir
    from . import runner
    from .expectations import check

    subject = _git(request.repo, "log", "-1", "--format=%s", commit)
    name = f"bisect-{commit[:12]}"
    try:
        build_kernel(BuildRequest(source=str(request.repo), ref=commit, name=name,
                                  fragments=request.fragments), progress)
    except (KernelBuildError, ToolError) as exc:
        return Evidence(commit, subject, "skip", name, reason=f"does not build: {exc}")
    scenario = scenario_for(name, request)
    workdir = runs_dir() / f"bisect-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{commit[:12]}"
    driver = LibvirtDriver(request.uri)
    try:
        record = runner.run_scenario(scenario, driver=driver, workdir=workdir,
                                     progress=lambda *parts, **_f: progress(" ".join(str(p) for p in parts)))
    except InfraError as exc:
        return Evidence(commit, subject, "skip", name, reason=f"infra error: {exc}")
    finally:
        try:
            driver.remove_scratch()
        finally:
            driver.close()
    metrics = {k: record.metric(k) for k in ("pte_ratio", "clients_attached") if record.metric(k) is not None}
    if record.kernel_log is not None:
        metrics["kernel_log"] = record.kernel_log.describe()
    if record.outcome == "infra-error":
        return Evidence(commit, subject, "skip", name, record.outcome, record.reason, [], metrics, str(workdir))
    failures = check(scenario.expect, record)
    return Evidence(commit, subject, "bad" if failures else "good", name, record.outcome, record.reason,
                    failures, metrics, str(workdir))


def bisect(request: BisectRequest, progress: Progress = stderr_progress) -> BisectResult:
    repo = request.repo.expanduser().resolve()
    if not (repo / ".git").exists() and not (repo / "HEAD").is_file():
        raise ConfigError(f"--source {request.repo} is not a git repository")
    request = BisectRequest(repo, _commit(repo, request.good), _commit(repo, request.bad), request.scenario,
                            request.expect, request.fragments, request.uri)
    if subprocess.run(["git", "-C", str(repo), "merge-base", "--is-ancestor", request.good, request.bad]).returncode:
        raise ConfigError(f"--good {request.good[:12]} is not an ancestor of --bad {request.bad[:12]}")
    scenario_for("bisect-check", request)            # bad keys fail now, before any build
    with tempfile.TemporaryDirectory(prefix="mshare-lab-bisect-") as tmp:
        control, evidence_dir = Path(tmp) / "control", Path(tmp) / "evidence"
        evidence_dir.mkdir()
        config = Path(tmp) / "request.json"
        config.write_text(json.dumps({**asdict(request), "repo": str(repo), "evidence": str(evidence_dir)}))
        _git(Path(tmp), "clone", "-q", "--shared", "--no-checkout", str(repo), str(control))
        _git(control, "bisect", "start", "--no-checkout", request.bad, request.good)
        try:
            progress(f"bisect: {request.good[:12]} (good) .. {request.bad[:12]} (bad) in {repo}")
            run = subprocess.run(["git", "-C", str(control), "bisect", "run", sys.executable, "-m",
                                  "mshare_lab.lab.bisect", "--step", str(config)],
                                 stdout=subprocess.PIPE, stderr=None, text=True)
            found = _FIRST_BAD.search(run.stdout)
            if not found:
                tail = " | ".join(run.stdout.strip().splitlines()[-4:])
                if "only 'skip'ped commits left" in run.stdout:
                    raise KernelBuildError(f"bisect could not decide: only skipped commits left ({tail})")
                raise ToolError(f"git bisect run ended without a first bad commit (exit {run.returncode}): {tail}")
        finally:
            subprocess.run(["git", "-C", str(control), "bisect", "reset"], capture_output=True)
        steps = {p.stem: Evidence(**json.loads(p.read_text())) for p in evidence_dir.glob("*.json")}
    first_bad = found.group(1)
    parent = _commit(repo, f"{first_bad}^")
    bad_side = steps.get(first_bad) or judge(request, first_bad, progress)
    good_side = steps.get(parent) or judge(request, parent, progress)
    ordered = sorted(steps.values(), key=lambda e: _git(repo, "rev-list", "--count", e.commit))
    return BisectResult(bad_side, good_side, ordered)


def _step(config_path: Path) -> int:
    """One ``git bisect run`` step, in the control clone (cwd): judge BISECT_HEAD."""
    try:
        raw = json.loads(config_path.read_text())
        evidence_dir = Path(raw.pop("evidence"))
        raw["repo"], raw["fragments"] = Path(raw["repo"]), tuple(raw["fragments"])
        request = BisectRequest(**raw)
        commit = _git(Path.cwd(), "rev-parse", "BISECT_HEAD")
        evidence = judge(request, commit)
        (evidence_dir / f"{commit}.json").write_text(json.dumps(asdict(evidence)))
        print(f"bisect step: {evidence.describe()}", file=sys.stderr, flush=True)
        return {"good": GOOD, "bad": BAD}.get(evidence.verdict, SKIP)
    except KeyboardInterrupt:
        return ABORT
    except Exception as exc:              # never let a lab bug read as "bad commit"
        print(f"bisect step aborted: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return ABORT


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--step":
        sys.exit(_step(Path(sys.argv[2])))
    sys.exit("usage: python -m mshare_lab.lab.bisect --step REQUEST.json (git bisect run calls this)")
