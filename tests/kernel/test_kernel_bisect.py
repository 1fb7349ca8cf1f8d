"""mshare-lab bisect names the commit that changed what a scenario sees.

Real: a git repository made here from Debian's 6.12 source (the cached extraction,
hard-linked) with four commits of the project's own; the third adds a WARN at boot, which
the guest's kernel log shows and the ``kernel_log`` expectation judges. Each bisect step
is a real incremental build (ccache warm from the suite's marker build) and a micro guest.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kernel_helpers import sha256_of

pytestmark = [pytest.mark.kernel_build, pytest.mark.slow, pytest.mark.vm]

WARN_LINE = '\tWARN(1, "mshare-lab bisect: the regression\\n");\n'


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def _rewrite(path: Path, text: str) -> None:
    """A new inode: the tree is hard-linked to the lab's pristine source cache."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def _commit(repo: Path, message: str) -> str:
    _git(repo, "add", "-A", "-f")           # every file of the tarball, .gitignore or not
    _git(repo, "-c", "user.name=mshare-lab", "-c", "user.email=lab@example.org", "commit", "-q", "-m", message)
    return _git(repo, "rev-parse", "HEAD")


@pytest.fixture
def repo_612(pristine_612, tmp_path) -> tuple[Path, list[str]]:
    repo = tmp_path / "linux"
    subprocess.run(["cp", "-al", str(pristine_612), str(repo)], check=True)
    _git(repo, "init", "-q", "-b", "work")
    commits = [_commit(repo, "Linux 6.12 (Debian linux-source-6.12)")]
    for number in (1, 2):
        (repo / f"Documentation/mshare-lab-note-{number}.txt").write_text(f"note {number}\n")
        commits.append(_commit(repo, f"Documentation: mshare-lab note {number}"))
    main_c = repo / "init/main.c"
    text = main_c.read_text()
    assert text.count("\tkernel_init_freeable();\n") == 1
    _rewrite(main_c, text.replace("\tkernel_init_freeable();\n", "\tkernel_init_freeable();\n" + WARN_LINE))
    commits.append(_commit(repo, "init: warn at boot (the regression)"))
    (repo / "Documentation/mshare-lab-note-4.txt").write_text("note 4\n")
    commits.append(_commit(repo, "Documentation: mshare-lab note 4"))
    return repo, commits


def test_bisect_names_the_commit_the_guest_sees(marker_kernel, repo_612, pristine_612):
    repo, commits = repo_612
    main_before = sha256_of(pristine_612 / "init/main.c")
    status_before = _git(repo, "status", "--porcelain")
    cli = [sys.executable, "-m", "mshare_lab.cli", "bisect", "--source", str(repo),
           "--good", commits[0], "--bad", "work",
           "--scenario", "mechanism=shmem, sga=16M, clients=4, ram=1G, duration=1, timeout=420",
           # a busy TCG host may stall vCPUs: tolerated, as on patched kernels by default
           "--expect", "outcome=completed, kernel_log=[rcu-stall, soft-lockup, hard-lockup, hung-task]"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=1500)
    print(done.stdout, done.stderr[-4000:])
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith(f"first bad commit: {commits[3]} init: warn at boot (the regression)\n"), out
    bad = re.search(r"^  bad:  (.*(?:\n    .*)*)", out, re.MULTILINE).group(1)
    good = re.search(r"^  good: (.*(?:\n    .*)*)", out, re.MULTILINE).group(1)
    # evidence of both sides: the bad one completed but its kernel log holds the WARN
    assert f"{commits[3][:12]} 'init: warn at boot (the regression)': bad, outcome completed" in bad
    assert "kernel_log" in bad and "warning" in bad
    assert good.startswith(f"{commits[2][:12]} 'Documentation: mshare-lab note 2': good, outcome completed")
    assert "clients_attached 4" in good and "kernel log: clean" in good
    assert "clients_attached 4" in bad and "1 warning" in bad
    assert re.search(r"^steps \(2\):", out, re.MULTILINE)    # c2 (good), then c3 (bad): log2 of 4
    # the repository as it was found: same branch and commit, clean, no bisect state
    assert _git(repo, "symbolic-ref", "HEAD") == "refs/heads/work"
    assert _git(repo, "rev-parse", "HEAD") == commits[4]
    assert _git(repo, "status", "--porcelain") == status_before == ""
    assert not (repo / ".git/BISECT_LOG").exists() and _git(repo, "for-each-ref", "refs/bisect") == ""
    assert sha256_of(pristine_612 / "init/main.c") == main_before          # the lab's cache
