"""lab prepare: the lab_host Ansible play on a two-host lab, this machine and the loopback SSH host.

Everything is installed here, so the play changes nothing but the pools' directories; the
SSH host's play really goes over the loopback sshd (the host reports $SSH_CONNECTION).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fleet_helpers import remove_pool
from mshare_lab.guest.host_files import pool_name_for

CLI = Path(sys.executable).parent / "mshare-lab"


def write_lab(path: Path, ssh_host, pools: dict[str, Path], *, hosts=("here", "loop")) -> Path:
    entries = {
        "here": ["  - name: here", "    uri: qemu:///system", f"    pool: {pools['here']}"],
        "loop": ["  - name: loop", f"    uri: {ssh_host.uri}", f"    ssh_key: {ssh_host.transport.key}",
                 f"    known_hosts: {ssh_host.transport.known_hosts}", f"    pool: {pools['loop']}"],
    }
    path.write_text("\n".join(["hosts:", *[line for name in hosts for line in entries[name]]]) + "\n")
    return path


def lab_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MSHARE_LAB_HOME": str(tmp_path / "home")}


@pytest.fixture
def pools():
    """Pool paths QEMU can reach (pytest's tmp_path is under a 0700 dir); removed afterwards."""
    import shutil
    root = Path(tempfile.mkdtemp(prefix="mshare-lab-test-pools-"))
    root.chmod(0o755)
    made = {"here": root / "here", "loop": root / "loop"}
    try:
        yield made
    finally:
        for path in made.values():
            remove_pool(pool_name_for(str(path)))
        shutil.rmtree(root)


def test_prepare_runs_the_play_locally_and_over_ssh_then_checks_each_host(tmp_path, ssh_libvirt_host, pools):
    lab = write_lab(tmp_path / "lab.yaml", ssh_libvirt_host, pools)
    out = subprocess.run([str(CLI), "lab", "prepare", "--lab", str(lab)], capture_output=True, text=True,
                         timeout=600, env=lab_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    plays = dict(re.findall(r"^host (\w+): play over (.+)$", text, re.M))
    assert set(plays) == {"here", "loop"}, text
    assert plays["here"].startswith("local (local) in ")
    # the SSH host saw the play arrive at the loopback sshd's port
    assert re.match(rf"ssh \(ssh from 127\.0\.0\.1:\d+ to 127\.0\.0\.1:{ssh_libvirt_host.sshd.port}\) in ",
                    plays["loop"]), plays["loop"]
    for name, line in plays.items():
        counts = {k: int(v) for k, v in re.findall(r"(ok|changed|skipped|failures) (\d+)", line)}
        # 12 task results; on this ready machine only the pool directory is new (and nothing fails)
        assert counts["failures"] == 0 and counts["changed"] == 1, (name, line)
        assert counts["ok"] + counts["skipped"] == 12, (name, line)
    assert text.count("  changed: Make the pool directory") == 2
    for path in pools.values():
        assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o755
    # the SSH host's pool is defined through libvirt, so doctor can report it right after
    assert f"  pool {pool_name_for(str(pools['loop']))} at {pools['loop']}" in text
    assert re.search(r"^ok   loop disk: .* in pool mshare-lab-[0-9a-f]{8} .*; cache 0 B$", text, re.M), text
    for name in ("here", "loop"):
        assert re.search(rf"^ok   {name} libvirt: .* reachable, QEMU \d+\.\d+", text, re.M)
        assert re.search(rf"^ok   {name} machine: CPU \S+, Linux \S+", text, re.M)
    assert text.rstrip().splitlines()[-1].startswith("ready: every required check passed")

    # a second prepare is idempotent: nothing changes on either host
    again = subprocess.run([str(CLI), "lab", "prepare", "--lab", str(lab)], capture_output=True, text=True,
                           timeout=600, env=lab_env(tmp_path))
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.findall(r"changed (\d+)", again.stdout) == ["0", "0"], again.stdout
    assert_no_control_masters_left(tmp_path / "home")


def assert_no_control_masters_left(home: Path) -> None:
    """Each play's ssh ControlMaster and its socket dir are gone once the play ended."""
    from mshare_lab.deploy.ansible import control_dir_prefix
    plays = sorted(home.glob("hosts/*/prepare/*/artifacts"))
    assert len(plays) == 4, plays                     # two hosts, two prepares, a data dir each
    for play in plays:
        prefix = control_dir_prefix(play.parent)
        assert not list(Path(tempfile.gettempdir()).glob(prefix + "*")), prefix
        leftover = subprocess.run(["pgrep", "-f", prefix], capture_output=True, text=True)
        assert leftover.stdout == "", leftover.stdout


def test_hugepages_at_their_current_value_are_left_alone(tmp_path, pools):
    current = int(Path("/proc/sys/vm/nr_hugepages").read_text())
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"hosts:\n  - name: here\n    uri: qemu:///system\n    pool: {pools['here']}\n")
    out = subprocess.run([str(CLI), "lab", "prepare", "--lab", str(lab), "--hugepages", str(current)],
                         capture_output=True, text=True, timeout=300, env=lab_env(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped     here: Reserve the huge pages scenarios ask for" in out.stderr
    assert int(Path("/proc/sys/vm/nr_hugepages").read_text()) == current


def test_a_host_whose_play_cannot_connect_is_reported_and_the_others_prepared(tmp_path, pools,
                                                                              disposable_ssh_libvirt_host):
    from fleet_helpers import cut_connection
    cut_connection(disposable_ssh_libvirt_host.sshd)
    lab = write_lab(tmp_path / "lab.yaml", disposable_ssh_libvirt_host, pools, hosts=("loop", "here"))
    out = subprocess.run([str(CLI), "lab", "prepare", "--lab", str(lab)], capture_output=True, text=True,
                         timeout=300, env=lab_env(tmp_path))
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"^FAIL loop prepare: host loop is unreachable over SSH \(root@127\.0\.0\.1:\d+\): ",
                     out.stdout, re.M), out.stdout
    assert re.search(r"^host here: play over local", out.stdout, re.M)
    assert "1 host(s) not prepared: loop" in out.stdout
    assert not pools["loop"].exists() and pools["here"].is_dir()


def test_a_pool_qemu_cannot_reach_fails_the_play_naming_the_directory(tmp_path):
    # pytest's basetemp (/tmp/pytest-of-root) is 0700: the qemu user cannot search it
    blocked = next(p for p in [tmp_path, *tmp_path.parents] if not p.stat().st_mode & stat.S_IXOTH)
    pool = tmp_path / "pool"
    lab = tmp_path / "lab.yaml"
    lab.write_text(f"hosts:\n  - name: here\n    uri: qemu:///system\n    pool: {pool}\n")
    try:
        out = subprocess.run([str(CLI), "lab", "prepare", "--lab", str(lab)], capture_output=True, text=True,
                             timeout=300, env=lab_env(tmp_path))
    finally:
        remove_pool(pool_name_for(str(pool)))
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(rf"^FAIL here prepare: task 'Check that QEMU can reach the pool' failed on here: "
                     rf"{re.escape(str(blocked))} is not searchable by others.* chmod o\+x {re.escape(str(blocked))} ",
                     out.stdout, re.M), out.stdout
    assert "1 host(s) not prepared: here" in out.stdout


def test_docs_describe_every_lab_file_key():
    from mshare_lab.fleet.lab_file import HOST_OPTIONS
    from mshare_lab.paths import REPO_ROOT
    text = (REPO_ROOT / "docs" / "lab.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", text, re.M))
    assert {o.key for o in HOST_OPTIONS} <= rows, {o.key for o in HOST_OPTIONS} - rows
