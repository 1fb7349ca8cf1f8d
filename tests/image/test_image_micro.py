"""The micro initramfs: its contents, its cache, the scenario file, and real boots under libvirt."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from mshare_lab import frames
from mshare_lab.errors import ConfigError
from mshare_lab.guest.domain import DomainSpec
from mshare_lab.image import micro


@pytest.fixture
def lab_home(tmp_path, monkeypatch) -> Path:
    """A private lab home so cache tests see their own images only."""
    home = tmp_path / "lab"
    monkeypatch.setenv("MSHARE_LAB_HOME", str(home))
    return home


@pytest.fixture
def fake_workload(tmp_path) -> Path:
    # cache and layout do not depend on what the binary does: any file is a valid input
    path = tmp_path / "mshare-sga"
    path.write_bytes(b"\x7fELF stand-in for the layout test\n")
    return path


def _cpio_listing(initrd: Path) -> list[str]:
    """`cpio -tv` lines of the first archive in a gzip initramfs."""
    data = subprocess.run(["gzip", "-dc", str(initrd)], capture_output=True, check=True).stdout
    return subprocess.run(["cpio", "-itv", "--quiet"], input=data, capture_output=True,
                          check=True).stdout.decode().splitlines()


def test_layout_busybox_links_workload_init_and_no_device_nodes(lab_home, fake_workload):
    initrd = micro.build(workload_binary=fake_workload)
    listing = _cpio_listing(initrd)
    by_name = {line.split()[-1] if " -> " not in line else line.split(" -> ")[0].split()[-1]: line
               for line in listing}
    assert by_name["init"].startswith("-rwxr-xr-x")
    assert by_name["usr/bin/mshare-sga"].startswith("-rwxr-xr-x")
    assert by_name["bin/busybox"].startswith("-rwx")
    assert by_name["bin/sh"].startswith("l") and by_name["bin/sh"].endswith("-> busybox")
    assert by_name["sbin/poweroff"].endswith("-> ../bin/busybox")
    for applet in ("bin/base64", "usr/bin/sha256sum", "sbin/sysctl", "bin/mount"):
        assert applet in by_name, applet
    # built without root: no device node in the archive, every entry owned by root
    assert not [line for line in listing if line[0] in "cb"]
    assert all(line.split()[2] == "root" and line.split()[3] == "root" for line in listing)
    assert (lab_home / "images" / (initrd.name.removesuffix(".cpio.gz") + ".json")).exists()


def test_second_build_is_a_cache_hit_and_inputs_change_the_image(lab_home, fake_workload, tmp_path,
                                                                monkeypatch):
    said: list[str] = []
    first = micro.build(said.append, workload_binary=fake_workload)
    stamp = first.stat().st_mtime_ns
    second = micro.build(said.append, workload_binary=fake_workload)
    assert second == first and first.stat().st_mtime_ns == stamp
    assert said[-1].endswith("cached")

    fake_workload.write_bytes(b"\x7fELF a newer workload\n")
    third = micro.build(workload_binary=fake_workload)
    assert third != first and third.exists() and first.exists()

    init = tmp_path / "init"
    init.write_text(micro.INIT_SCRIPT.read_text() + "# changed\n")
    monkeypatch.setattr(micro, "INIT_SCRIPT", init)
    assert micro.build(workload_binary=fake_workload) not in (first, third)
    # no staging directory is left in the images dir
    assert not [p for p in (lab_home / "images").iterdir() if p.name.startswith(".")]


def test_scenario_env_survives_shell_quoting(tmp_path):
    env = {"WORKLOAD_ARGS": "--mechanism shmem --sga 64M", "SCENARIO_ID": "debian-6.1/shmem/64M x'20\" $HOME"}
    file = tmp_path / "scenario.env"
    file.write_text(micro.render_env(env))
    out = subprocess.run(["busybox", "sh", "-c", '. "$1"; printf "%s\\n%s" "$WORKLOAD_ARGS" "$SCENARIO_ID"',
                          "sh", str(file)], capture_output=True, text=True, check=True).stdout
    assert out.split("\n") == [env["WORKLOAD_ARGS"], env["SCENARIO_ID"]]


def test_scenario_env_refuses_what_the_init_cannot_pass_on():
    with pytest.raises(ConfigError, match="not a shell name"):
        micro.render_env({"bad-name": "1"})
    with pytest.raises(ConfigError, match="cannot pass through"):
        micro.env_for(["--sga", "64 M"])
    env = micro.env_for(["--clients", "20"], nr_hugepages=16, sysctls={"vm.overcommit_memory": "1"})
    assert env == {"WORKLOAD_ARGS": "--clients 20", "PROBE_ARGS": "", "NR_HUGEPAGES": "16",
                   "SYSCTLS": "vm.overcommit_memory=1"}


def test_scenario_initrd_appends_to_the_base(tmp_path, lab_home, fake_workload):
    base = micro.build(workload_binary=fake_workload)
    out = micro.scenario_initrd(base, {"WORKLOAD_ARGS": "--clients 2"}, tmp_path / "run.cpio.gz")
    data = out.read_bytes()
    assert data.startswith(base.read_bytes()) and len(data) < base.stat().st_size + 1024
    # the appended member unpacks to the scenario file alone
    tail = data[base.stat().st_size:]
    listing = subprocess.run(["sh", "-c", "gzip -dc | cpio -it --quiet"], input=tail,
                             capture_output=True, check=True).stdout.decode().split()
    assert "etc/mshare-lab/scenario.env" in listing


# --- real boots ---------------------------------------------------------------------------

WORKLOAD = ["--mechanism", "shmem", "--sga", "64M", "--clients", "20", "--duration", "1",
            "--populate", "1", "--write-share", "0.1"]


def _boot(driver, kernel, initrd: Path, tmp_path: Path, timeout: float = 300):
    spec = DomainSpec(name=driver.new_name(), memory=1 << 30, vcpus=2, kernel=kernel.bzimage,
                      initrd=initrd, cmdline=micro.MICRO_CMDLINE,
                      console_path=tmp_path / "console.log", serial_path=tmp_path / "serial.log")
    started = time.monotonic()
    with driver.boot(spec) as guest:
        ended = guest.wait(timeout)
        seconds = time.monotonic() - started
        console = guest.console_text()
        end_reason = guest.end_reason
    assert ended, f"guest did not power off in {timeout} s; console:\n{console[-3000:]}"
    # the boot block removed the domain: nothing of this run is left in libvirt
    assert not [n for n, _m, _a in driver.lab_domains() if n == spec.name]
    return micro.read_guest_output(spec.serial_path), console, seconds, end_reason


@pytest.mark.vm
def test_micro_guest_runs_the_workload_and_reports(driver, debian_kernel, workload_binary, tmp_path):
    base = micro.build(workload_binary=workload_binary)
    # a stale scenario first, then the real one: the kernel unpacks in order, the later wins
    stale = micro.scenario_initrd(base, {"WORKLOAD_ARGS": "--no-such-flag", "SCENARIO_ID": "stale"},
                                  tmp_path / "stale.cpio.gz")
    initrd = micro.scenario_initrd(
        stale, micro.env_for(WORKLOAD, sysctls={"vm.overcommit_memory": "1"}, scenario_id="real"),
        driver.scratch_dir() / "micro-test.cpio.gz")
    out, console, seconds, end_reason = _boot(driver, debian_kernel, initrd, tmp_path)
    print(f"micro guest: boot + workload + poweroff {seconds:.1f} s")

    assert out.broken == [] and out.errors == [], out.broken
    assert sorted(out.frames) == sorted(micro.FRAME_NAMES)
    assert out.complete and end_reason == "shutdown"
    assert out.status["scenario_id"] == "real"
    assert out.status["error"] is None and out.status["workload_exit"] == 0
    assert out.status["kernel_release"] == debian_kernel.release
    assert 0 < out.status["uptime_s"] < seconds

    result = out.result
    assert result["outcome"] == "completed", result
    assert result["mechanism"] == "shmem"
    assert result["kernel_release"] == debian_kernel.release
    assert result["region_bytes"] == 64 << 20
    assert result["clients_requested"] == 20 and result["clients_attached"] == 20
    # 64 MiB of 4 KiB pages = 16384 PTEs = 128 KiB of page tables per client, unshared
    assert result["theory_pte_bytes"] == 20 * 128 * 1024
    assert 0.5 < result["pte_ratio"] < 3, result["pte_ratio"]
    assert result["throughput_tps"] > 0
    assert out.probe is not None

    meminfo = micro.meminfo_kib(out.meminfo)
    assert 900 * 1024 < meminfo["MemTotal"] <= 1024 * 1024
    assert "Linux version " + debian_kernel.release in out.dmesg
    assert "oom_kill" in out.vmstat
    # live progress went to the console: the init's and the workload's
    events = list(frames.progress_events(console.splitlines()))
    steps = [e.get("step") for e in events if e.get("phase") == "boot"]
    assert steps[:2] == ["mounted", "scenario"] and steps[-1] == "poweroff"
    assert any(e.get("phase") != "boot" for e in events)


@pytest.mark.vm
def test_micro_guest_without_scenario_still_reports(driver, debian_kernel, workload_binary, tmp_path):
    base = micro.build(workload_binary=workload_binary)
    out, console, _seconds, _reason = _boot(driver, debian_kernel, base, tmp_path)
    assert out.complete
    assert "scenario.env" in out.status["error"]
    assert out.status["workload_exit"] == -1 and out.result is None
    assert out.dmesg and "Linux version" in out.dmesg
    assert "mshare-lab init: no /etc/mshare-lab/scenario.env" in console


def test_prune_keeps_the_newest_of_each_kind(lab_home, fake_workload):
    from mshare_lab.image import cache
    paths = []
    for n in range(3):
        fake_workload.write_bytes(f"workload {n}".encode())
        paths.append(micro.build(workload_binary=fake_workload))
    removed = cache.prune(keep=1)
    assert sorted(e.path for e in removed) == sorted(paths[:2])
    assert [e.path for e in cache.list_all()] == [paths[2]]
    assert not paths[0].exists() and paths[2].exists()
    assert sorted(p.name for p in (lab_home / "images").iterdir()) == sorted(
        [paths[2].name, paths[2].name.replace(".cpio.gz", ".json")])


@pytest.mark.vm
def test_micro_guest_ends_a_stuck_workload_and_still_reports(driver, debian_kernel, workload_binary,
                                                             tmp_path):
    base = micro.build(workload_binary=workload_binary)
    long_run = ["--mechanism", "shmem", "--sga", "16M", "--clients", "4", "--duration", "600"]
    initrd = micro.scenario_initrd(base, micro.env_for(long_run, workload_timeout=3),
                                   driver.scratch_dir() / "stuck.cpio.gz")
    out, console, seconds, _reason = _boot(driver, debian_kernel, initrd, tmp_path)
    assert seconds < 300          # far less than the 600 s the workload asked for
    assert out.complete
    assert out.status["workload_exit"] not in (0, -1)
    assert "WORKLOAD_TIMEOUT=3" in out.status["error"]
    assert out.dmesg and out.meminfo and out.vmstat
