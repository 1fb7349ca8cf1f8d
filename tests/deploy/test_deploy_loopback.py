"""The ansible-runner and Fabric plumbing against a real sshd on 127.0.0.1.

The sshd (see conftest.py) stands in for a full guest's sshd: same key login as root,
same checked host key, same SFTP. The ``prepare`` role is skipped here because it
changes kernel settings of whatever machine it runs on (this host); the VM tests run it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mshare_lab.deploy import fabric_ops
from mshare_lab.deploy.ansible import GuestUnreachableError, PlaybookError, run_playbook
from mshare_lab.deploy.fabric_ops import HostKeyMismatchError, wait_for_ssh
from mshare_lab.deploy.target import SshTarget, write_known_hosts
from mshare_lab.errors import LabTimeoutError
from mshare_lab.options import WorkloadSpec
from mshare_lab.lab.runner import workload_args
from mshare_lab.workload.build import ensure_binary
from mshare_lab.workload.result import WorkloadResult

from deploy_helpers import control_masters, free_port, processes_mentioning


def _extravars(tmp: Path, binary: Path, args: list[str]) -> dict:
    """Everything the play writes goes under tmp (never the host's /usr/local or lab home)."""
    remote = tmp / "remote-run"
    (tmp / "installed").mkdir(exist_ok=True)   # /usr/local/bin in a real guest
    return {
        "deploy_workload_binary": str(binary),
        "deploy_workload_dest": str(tmp / "installed" / "mshare-sga"),
        "run_workload_binary": str(tmp / "installed" / "mshare-sga"),
        "run_workload_dir": str(remote),
        "run_workload_args": args,
        "run_workload_timeout": 120,
        "run_workload_poll": 1,
        "run_workload_probe_poll": 1,
        "collect_remote_dir": str(remote),
        "collect_dest": str(tmp / "collected"),
    }


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_play_runs_the_real_workload_and_fetches_its_result(loopback_sshd, tmp_path):
    lines: list[str] = []
    spec = WorkloadSpec(mechanism="shmem", sga=16 << 20, clients=4, duration=0.5)
    extravars = _extravars(tmp_path, ensure_binary(), workload_args(spec))
    played = run_playbook([loopback_sshd.target], workdir=tmp_path / "ansible", extravars=extravars,
                          progress=lines.append, skip_tags=["prepare"], ident="loopback")

    host_dir = tmp_path / "collected" / loopback_sshd.target.name
    result = WorkloadResult.from_json((host_dir / "result.json").read_text())
    assert result.outcome == "completed"
    assert result.clients_attached == 4
    assert result.region_bytes == 16 << 20
    assert json.loads((host_dir / "probe.json").read_text())
    for name in ("meminfo.txt", "vmstat.txt", "kernel.log", "uname.txt"):
        assert (host_dir / name).exists(), name
    assert "PageTables:" in (host_dir / "meminfo.txt").read_text()
    assert (host_dir / "uname.txt").read_text().strip() == os.uname().release
    # the workload's exit code is captured from the runner's events
    assert played.task_result(loopback_sshd.target.name, "Run the workload")["rc"] == 0
    # progress: the play, then one line per host result
    assert lines[0].startswith("play: ")
    assert any("ok" in line and "Run the workload" in line for line in lines)
    # artifacts kept with the run: inventory with checked host keys, the event stream
    inventory = json.loads((tmp_path / "ansible" / "inventory" / "hosts.json").read_text())
    host = inventory["all"]["children"]["lab_guests"]["hosts"][loopback_sshd.target.name]
    assert "StrictHostKeyChecking=yes" in host["ansible_ssh_extra_args"]
    # quoted for ssh's own option parser too, so a path with a space stays one path
    assert f'UserKnownHostsFile="{loopback_sshd.target.known_hosts}"' in shlex.split(host["ansible_ssh_extra_args"])
    assert list((played.artifact_dir / "job_events").glob("*.json"))
    assert control_masters(tmp_path / "ansible") == []


def test_workload_failure_names_task_host_and_stderr(loopback_sshd, tmp_path):
    bad = _script(tmp_path / "bad-sga", 'echo "mshare-sga: --sga: not a size: boom" >&2\nexit 2\n')
    with pytest.raises(PlaybookError) as caught:
        run_playbook([loopback_sshd.target], workdir=tmp_path / "ansible", skip_tags=["prepare"],
                     extravars=_extravars(tmp_path, bad, ["--sga", "boom"]))
    error = caught.value
    assert error.host == loopback_sshd.target.name
    assert error.task == "Fail the play when the workload wrote no result document"
    assert "exited 2" in str(error) and "not a size: boom" in str(error)
    assert loopback_sshd.target.name in str(error)
    # what ran before the failure is still reported, and collect ran (always)
    assert error.result.task_result(loopback_sshd.target.name, "Run the workload")["rc"] == 2
    assert (tmp_path / "collected" / loopback_sshd.target.name / "meminfo.txt").exists()
    assert control_masters(tmp_path / "ansible") == []


def test_missing_binary_fails_at_the_copy_task(loopback_sshd, tmp_path):
    with pytest.raises(PlaybookError) as caught:
        run_playbook([loopback_sshd.target], workdir=tmp_path / "ansible", skip_tags=["prepare"],
                     extravars=_extravars(tmp_path, tmp_path / "no-such-binary", []))
    assert caught.value.task == "Copy the static mshare-sga binary"
    assert "no-such-binary" in str(caught.value)


def test_wrong_host_key_is_refused_everywhere(loopback_sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = write_known_hosts(tmp_path / "wrong_known_hosts",
                              [("127.0.0.1", loopback_sshd.port, (tmp_path / "other_key.pub").read_text())])
    target = SshTarget(name="impostor", host="127.0.0.1", port=loopback_sshd.port,
                       key=loopback_sshd.target.key, known_hosts=wrong)
    started = time.monotonic()
    with pytest.raises(HostKeyMismatchError, match=f"127.0.0.1:{loopback_sshd.port}"):
        wait_for_ssh(target, timeout=60)
    assert time.monotonic() - started < 10, "a wrong host key must not be retried until the timeout"
    result = fabric_ops.exec_one(target, "true")
    assert result.exit_code == 255 and "host key" in result.error
    with pytest.raises(GuestUnreachableError, match="impostor"):
        run_playbook([target], workdir=tmp_path / "ansible", skip_tags=["prepare"],
                     extravars=_extravars(tmp_path, tmp_path / "unused", []), timeout=120)


def test_closed_port_times_out_with_host_port_and_what_was_tried(tmp_path, loopback_sshd):
    port = free_port()   # nothing listens there
    target = SshTarget(name="nobody", host="127.0.0.1", port=port, key=loopback_sshd.target.key,
                       known_hosts=loopback_sshd.target.known_hosts)
    started = time.monotonic()
    with pytest.raises(LabTimeoutError) as caught:
        wait_for_ssh(target, timeout=3, interval=0.5)
    elapsed = time.monotonic() - started
    assert 3 <= elapsed < 8
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "connection refused" in message
    assert "as root with" in message


def test_exec_prefixes_output_and_reports_failures(loopback_sshd):
    second = SshTarget(**{**loopback_sshd.target.__dict__, "name": "second"})
    results = fabric_ops.exec_all([loopback_sshd.target, second],
                                  'echo "hello from $(id -un)"; [ "$(id -un)" = root ] && exit 3')
    assert [r.name for r in results] == [loopback_sshd.target.name, "second"]
    assert all(r.exit_code == 3 and not r.ok for r in results)
    assert results[1].prefixed_lines() == ["second: hello from root", "second: exit code 3"]
    ok = fabric_ops.exec_one(loopback_sshd.target, "uname -r")
    assert ok.ok and ok.stdout.strip() == os.uname().release


def test_gather_failure_logs_keeps_console_and_kernel_log(loopback_sshd, tmp_path):
    console = tmp_path / "console.log"
    console.write_text("[    0.000000] Linux version test\n")
    written = fabric_ops.gather_failure_logs(loopback_sshd.target, tmp_path / "failure", console=console)
    names = {p.name for p in written}
    assert "console.log" in names and "kernel.log" in names
    assert (tmp_path / "failure" / "console.log").read_text() == console.read_text()
    # an unreachable guest still leaves the console and says what could not be gathered
    gone = SshTarget(name="gone", host="127.0.0.1", port=free_port(), key=loopback_sshd.target.key,
                     known_hosts=loopback_sshd.target.known_hosts)
    written = fabric_ops.gather_failure_logs(gone, tmp_path / "failure2", console=console, timeout=5)
    assert {p.name for p in written} == {"console.log", "gather-errors.txt"}
    assert "127.0.0.1" in (tmp_path / "failure2" / "gather-errors.txt").read_text()


def test_ctrl_c_cancels_the_play_and_leaves_no_process(loopback_sshd, tmp_path):
    slow = _script(tmp_path / "slow-sga", "while :; do sleep 1; done\n")
    workdir = tmp_path / "ansible-cancelled"
    lines: list[str] = []
    # SIGINT once the workload task is running, as a user pressing Ctrl-C would send it
    def interrupt_when_running():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any("Run the workload" in line or "Probe" in line for line in lines):
                time.sleep(1)
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_playbook([loopback_sshd.target], workdir=workdir, skip_tags=["prepare"], progress=lines.append,
                     extravars={**_extravars(tmp_path, slow, []), "run_workload_probe_timeout": 300})
    try:
        assert time.monotonic() - started < 100
        time.sleep(1)
        assert processes_mentioning(str(workdir)) == []
        assert control_masters(workdir) == []
    finally:
        # the detached job on the "guest" side: a real guest is destroyed with it
        for line in processes_mentioning(str(tmp_path / "installed")):
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
