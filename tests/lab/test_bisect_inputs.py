"""mshare-lab bisect refuses bad input before building anything (a tiny git repository,
no kernel: every check here runs before the first build)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError, NotFoundError
from mshare_lab.lab.bisect import BisectRequest, bisect
from mshare_lab.lab.single import parse_pairs


def _repo(tmp_path: Path) -> tuple[Path, list[str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    commits = []
    for number in range(3):
        (repo / "file").write_text(f"{number}\n")
        subprocess.run([*git, "add", "file"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", f"c{number}"], check=True)
        commits.append(subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip())
    return repo, commits


SCENARIO = {"mechanism": "shmem", "sga": "16M", "clients": 4}


def test_bad_inputs_fail_before_any_build(tmp_path):
    repo, commits = _repo(tmp_path)
    with pytest.raises(ConfigError, match="not an ancestor"):
        bisect(BisectRequest(repo, commits[2], commits[0], SCENARIO, {"outcome": "completed"}))
    with pytest.raises(NotFoundError, match="'no-such-ref' not found"):
        bisect(BisectRequest(repo, "no-such-ref", commits[2], SCENARIO, {"outcome": "completed"}))
    with pytest.raises(ConfigError, match="pte_ratio_maxx"):
        bisect(BisectRequest(repo, commits[0], commits[2], SCENARIO, {"pte_ratio_maxx": 1}))
    with pytest.raises(ConfigError, match="not a git repository"):
        bisect(BisectRequest(tmp_path, commits[0], commits[2], SCENARIO, {}))
    # nothing was started: no bisect state in the repository
    assert not (repo / ".git/BISECT_LOG").exists()


def test_pairs_and_cli_errors(tmp_path):
    assert parse_pairs("outcome=completed, kernel_log=[rcu-stall, hung-task], pte_ratio_max=0.1", what="x") == {
        "outcome": "completed", "kernel_log": ["rcu-stall", "hung-task"], "pte_ratio_max": 0.1}
    with pytest.raises(ConfigError, match="key=value"):
        parse_pairs("outcome", what="--expect")
    repo, commits = _repo(tmp_path)
    done = subprocess.run([sys.executable, "-m", "mshare_lab.cli", "bisect", "--source", str(repo),
                           "--good", commits[0], "--bad", commits[2], "--scenario", "mechanism=shmem, clients=many",
                           "--expect", "outcome=completed"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "clients: 'many' is not a whole number" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
