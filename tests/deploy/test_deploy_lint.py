"""The playbooks and roles stay ansible-lint clean (production profile)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mshare_lab.deploy.ansible import ANSIBLE_DIR


def test_ansible_lint_is_clean():
    lint = Path(sys.executable).parent / "ansible-lint"
    assert lint.exists(), "ansible-lint is not installed in the venv: pip install -e '.[test]'"
    proc = subprocess.run([str(lint), "--profile", "production", "--nocolor", str(ANSIBLE_DIR)],
                          capture_output=True, text=True, cwd=ANSIBLE_DIR.parent, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failure(s), 0 warning(s)" in proc.stdout + proc.stderr


def test_the_standard_role_layout_is_complete():
    for role in ("prepare", "deploy_workload", "run_workload", "collect"):
        for part in ("tasks", "defaults", "handlers", "meta"):
            assert (ANSIBLE_DIR / "roles" / role / part / "main.yml").is_file(), f"{role}/{part}"
    assert (ANSIBLE_DIR / "site.yml").is_file()
