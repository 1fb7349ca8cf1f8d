"""The full-guest path for real: the Debian image under libvirt/QEMU, Ansible over SSH.

One guest runs a small scenario end to end (prepare, deploy, run, collect) while
``mshare-lab exec --all -- uname -r`` reaches it from another process; the record goes
into a results store and its result document must have the keys of the micro/local
path's document. A second guest boots with its sshd masked (a closed port behind a live
forward) and must fail within its SSH timeout with nothing left behind.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from mshare_lab.deploy import full_guest
from mshare_lab.errors import LabTimeoutError
from mshare_lab.guest.domain import DOMAIN_PREFIX
from mshare_lab.guest.libvirt_driver import LibvirtDriver
from mshare_lab.image import debian
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec
from mshare_lab.results.store import ResultStore
from mshare_lab.workload.local import run_local

from deploy_helpers import control_masters, processes_mentioning

pytestmark = [pytest.mark.vm, pytest.mark.slow]

SPEC = WorkloadSpec(mechanism="shmem", sga=32 << 20, clients=8, duration=1.0)


@pytest.fixture(scope="module")
def image():
    return debian.build(print)


@pytest.fixture
def driver():
    drv = LibvirtDriver()
    try:
        yield drv
    finally:
        drv.remove_scratch()
        drv.close()


def _domains_of(driver: LibvirtDriver) -> list[str]:
    conn = libvirt.open(driver.uri)
    try:
        return [d.name() for d in conn.listAllDomains() if d.name().startswith(f"{DOMAIN_PREFIX}{driver.run_id}")]
    finally:
        conn.close()


def _task_result(private_data_dir: Path, host: str, task: str) -> dict:
    for path in sorted((private_data_dir / "artifacts").glob("*/job_events/*.json")):
        event = json.loads(path.read_text())
        data = event.get("event_data", {})
        if event.get("event") == "runner_on_ok" and data.get("host") == host and data.get("task") == task:
            return data["res"]
    raise AssertionError(f"no ok result of {task!r} on {host}")


def _image_release(image) -> str:
    return (Path(image.kernel).parent / "release").read_text().strip()


def test_debian_scenario_runs_through_ansible_and_lands_in_the_store(image, driver, tmp_path):
    release = _image_release(image)
    scenario = Scenario(kernel=f"debian-{'.'.join(release.split('.')[:2])}", workload=SPEC,
                        guest=GuestShape(memory=1 << 30, vcpus=2, image="debian", timeout=300))
    lines: list[str] = []
    exec_proc: list[subprocess.Popen] = []

    def progress(line: str) -> None:
        lines.append(line)
        print(line, flush=True)
        # as soon as the guest answers SSH, reach it from another process, as a user would
        if "up after" in line and not exec_proc:
            exec_proc.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "mshare-lab"), "exec", "--all", "--", "uname", "-r"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))

    record = full_guest.run(scenario, None, driver, tmp_path / "run", progress, image=image)
    try:
        assert record.outcome == "completed", record.reason
        assert record.result["outcome"] == "completed"
        assert record.result["clients_attached"] == SPEC.clients
        assert record.result["region_bytes"] == SPEC.sga
        assert record.result["kernel_release"] == release
        assert record.kernel_metadata["release"] == release
        assert 0 < record.guest_seconds <= record.wall_seconds

        # mshare-lab exec --all reached the running guest by its domain metadata
        assert exec_proc, "the guest never answered SSH"
        out, err = exec_proc[0].communicate(timeout=120)
        name = next(line.split()[1] for line in lines if line.startswith("boot "))
        assert f"{name}: {release}" in out.splitlines(), out + err

        # into the store, and out again with the same schema as the local/micro path
        store = ResultStore(tmp_path / "results.sqlite")
        run_id = store.add(record)
        stored = store.get(run_id)
        assert stored.outcome == "completed" and stored.scenario_id == scenario.scenario_id
        # the kernel log the playbook collected is part of the result, as for micro guests
        assert stored.kernel_log is not None and stored.kernel_log.source == "dmesg"
        assert stored.kernel_log.lines > 100, stored.kernel_log
        print(f"full guest {stored.kernel_log.describe()}")
        local = run_local(dataclasses.replace(SPEC, clients=2, sga=8 << 20), tmp_path / "local.json")
        assert set(stored.result) == set(local.to_dict())
        assert stored.result["schema"] == local.to_dict()["schema"]

        # artifacts kept with the run
        collected = tmp_path / "run" / "collected" / name
        for file in ("result.json", "probe.json", "kernel.log", "meminfo.txt", "vmstat.txt"):
            assert (collected / file).is_file(), file
        assert (tmp_path / "run" / "ansible" / "artifacts" / "run-scenario" / "job_events").is_dir()
        # prepare really ran in the guest
        sysctl = _task_result(tmp_path / "run" / "ansible", name, "Apply the scenario sysctls")
        assert "vm.max_map_count = 1048576" in sysctl["stdout"]
    finally:
        if exec_proc and exec_proc[0].poll() is None:
            exec_proc[0].kill()
    # nothing left: domain, overlay, ansible and ssh processes
    assert _domains_of(driver) == []
    assert not list(Path(driver.scratch_dir()).glob("*.qcow2"))
    assert processes_mentioning(str(tmp_path / "run")) == []
    assert control_masters(tmp_path / "run" / "ansible") == []


def test_guest_with_a_closed_ssh_port_fails_clearly_and_leaves_nothing(image, driver, tmp_path):
    # the forward on 127.0.0.1 is live but nothing listens behind it in the guest
    closed = dataclasses.replace(image, cmdline=image.cmdline + " systemd.mask=ssh.service systemd.mask=ssh.socket")
    scenario = Scenario(kernel="debian-image", workload=SPEC,
                        guest=GuestShape(memory=1 << 30, image="debian", timeout=120))
    timeout = 40.0
    started = time.monotonic()
    with pytest.raises(LabTimeoutError) as caught:
        full_guest.run(scenario, None, driver, tmp_path / "run", print, image=closed, ssh_timeout=timeout)
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert "127.0.0.1:" in message and f"within {timeout:.0f} s" in message and "attempts" in message
    # the SSH timeout, plus booting, one failed attempt to fetch the kernel log and teardown
    assert elapsed < timeout + 90, f"took {elapsed:.0f} s"
    assert _domains_of(driver) == []
    assert not list(Path(driver.scratch_dir()).glob("*.qcow2"))
    assert (tmp_path / "run" / "failure" / "console.log").is_file()
    assert processes_mentioning(str(tmp_path / "run")) == []
