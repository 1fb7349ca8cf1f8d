"""`mshare-lab local` killed the way timeout, CI and systemd kill it: nothing stays behind.

Real processes, real signals: the CLI is started, waits until its clients run
transactions (so the region, the SysV/hugetlb segment and a raised vm.nr_hugepages
exist), then gets ``kill -TERM`` or ``kill -KILL``; after a SIGKILL of everything,
``mshare-lab gc`` must find what the run recorded and remove it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mshare_lab import paths
from mshare_lab.workload.build import ensure_binary

from cgroup_limits import limited

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hugetlb and cgroups need root")

NR_HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


@pytest.fixture(scope="module")
def binary() -> Path:
    return ensure_binary()


def _workload_pids(binary: Path) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/exe") == str(binary):
                    state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def _host_state() -> dict:
    ipcs = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    return {
        "shm": sorted(str(p) for p in Path("/dev/shm").glob("mshare-sga-*")),
        "sysv": sorted(line.split()[0] for line in ipcs.splitlines() if line.startswith("0x4d53")),
        "nr_hugepages": NR_HUGEPAGES.read_text().strip(),
        "tmp": sorted(str(p) for p in Path("/tmp").glob("mshare-lab-local-*"))
        + sorted(str(p) for p in Path("/tmp").glob("mshare-sga.*")),
        "state_dirs": sorted(str(p) for p in paths.runs_dir().glob("local-*")),
    }


def _start(mechanism: str, name: str):
    cli = [sys.executable, "-m", "mshare_lab.cli", "local", "--mechanism", mechanism, "--sga", "64M",
           "--clients", "40", "--duration", "120"]
    cg = limited(name, pids=400, memory=1 << 30)
    enter = cg.__enter__()
    proc = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=enter)
    assert proc.stderr is not None
    for line in proc.stderr:
        if "transactions" in line:
            break
    else:
        cg.__exit__(None, None, None)
        pytest.fail(f"the run ended before its transactions phase (exit {proc.wait()})")
    return proc, cg


def _assert_clean(before: dict) -> None:
    """Nothing the run made is left (other helpers may create their own meanwhile)."""
    now = _host_state()
    left = {key: sorted(set(now[key]) - set(before[key])) for key in before if key != "nr_hugepages"}
    assert left == {key: [] for key in left}, left
    assert now["nr_hugepages"] == before["nr_hugepages"]


def _wait_gone(binary: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _workload_pids(binary) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _workload_pids(binary) == [], "workload processes outlived the run"


def _holds(before: dict, during: dict, mechanism: str) -> None:
    """The run really holds what it must clean up."""
    if mechanism == "hugetlb":
        assert set(during["sysv"]) - set(before["sysv"])
        assert int(during["nr_hugepages"]) >= int(before["nr_hugepages"]) + 32
    else:
        assert set(during["shm"]) - set(before["shm"])
    assert set(during["tmp"]) - set(before["tmp"])
    assert set(during["state_dirs"]) - set(before["state_dirs"])


@pytest.mark.parametrize("mechanism", ["hugetlb", "shmem"])
def test_sigterm_cleans_up_by_itself(binary, mechanism):
    before = _host_state()
    proc, cg = _start(mechanism, f"term-{mechanism}")
    try:
        _holds(before, _host_state(), mechanism)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        _wait_gone(binary)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cg.__exit__(None, None, None)
    assert proc.returncode == 130, proc.stderr.read() if proc.stderr else ""
    _assert_clean(before)


def test_sigkill_of_the_cli_lets_the_coordinator_clean_up(binary):
    """The CLI dies at once; the coordinator gets SIGTERM (parent-death signal) and cleans up,
    gc removes the CLI's own temporary directory and the run's record."""
    before = _host_state()
    proc, cg = _start("hugetlb", "kill-cli")
    try:
        _holds(before, _host_state(), "hugetlb")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_gone(binary)
        after_kill = _host_state()
        # the coordinator removed the segment and gave the huge pages back by itself
        assert set(after_kill["sysv"]) <= set(before["sysv"])
        assert after_kill["nr_hugepages"] == before["nr_hugepages"]
        gc = subprocess.run([sys.executable, "-m", "mshare_lab.cli", "gc"], capture_output=True, text=True,
                            timeout=120)
        assert gc.returncode == 0, gc.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cg.__exit__(None, None, None)
    _assert_clean(before)


@pytest.mark.parametrize("mechanism", ["hugetlb", "shmem"])
def test_sigkill_of_everything_then_gc(binary, mechanism):
    """CLI and coordinator both SIGKILLed: the region, the segment, vm.nr_hugepages and the
    tmp dirs stay until gc, which removes every one of them from the recorded state."""
    before = _host_state()
    proc, cg = _start(mechanism, f"kill-all-{mechanism}")
    try:
        _holds(before, _host_state(), mechanism)
        coordinator = [p for p in _workload_pids(binary)
                       if int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid]
        assert len(coordinator) == 1
        os.kill(coordinator[0], signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_gone(binary)   # clients and owner die by their parent-death signal
        left = _host_state()
        assert any(set(left[k]) - set(before[k]) for k in ("shm", "sysv", "tmp", "state_dirs")), \
            "nothing was left to collect: the test proves nothing"
        gc = subprocess.run([sys.executable, "-m", "mshare_lab.cli", "gc"], capture_output=True, text=True,
                            timeout=120)
        assert gc.returncode == 0, gc.stderr
        assert "removed" in gc.stdout
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cg.__exit__(None, None, None)
    _assert_clean(before)


def test_a_ctrl_c_followed_by_sigterm_is_recorded_as_sigint(binary, tmp_path):
    """The supervisor sends SIGTERM after the user's SIGINT: the run still says signal 2."""
    out = tmp_path / "result.json"
    with limited("sigint", pids=100, memory=512 << 20) as enter:
        proc = subprocess.Popen([str(binary), "run", "--mechanism", "shmem", "--sga", "8M", "--clients", "10",
                                 "--duration", "60", "--json", str(out)], stderr=subprocess.PIPE, text=True,
                                preexec_fn=enter)
        for line in proc.stderr:
            if '"phase":"transactions"' in line:
                break
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT
    import json
    doc = json.loads(out.read_text())
    assert doc["reason"] == "interrupted by signal 2", doc["reason"]


def test_bad_input_to_the_workload_is_its_error_line_and_exit_2(binary):
    direct = subprocess.run([str(binary), "run", "--clients", "10000000"], capture_output=True, text=True)
    assert direct.returncode == 2
    assert direct.stderr.strip().splitlines() == [
        "mshare-sga: error: --clients: '10000000' must be a whole number from 1 to 1000000 "
        "(mshare-sga without arguments prints the usage)"]
    cli = subprocess.run([sys.executable, "-m", "mshare_lab.cli", "local", "--sga", "1M", "--clients", "2",
                          "--ptshare-flag", "zz"], capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2, cli.stderr
    assert cli.stderr.strip() == "mshare-lab: error: --ptshare-flag: 'zz' is not a hex flag"
