"""The lab file (file:line errors) and placement by fit, on real hosts that boot nothing.

The hosts are this machine's libvirtd under two URIs (``qemu:///system`` and
``qemu+unix:///system``) with RAM limits from the lab file, so capacity is asked from libvirt
for real and capped by the limits the tests choose.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mshare_lab.errors import ConfigError, LimitError
from mshare_lab.fleet import lab_file
from mshare_lab.fleet.host import hosts_for
from mshare_lab.fleet.placement import Placement, largest_first, refuse_unplaceable
from mshare_lab.guest.capacity import QEMU_OVERHEAD
from mshare_lab.lab.scenario import GuestShape, Scenario
from mshare_lab.options import WorkloadSpec

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def test_the_example_lab_file_loads():
    lab = lab_file.load(REPO / "examples" / "lab.yaml")
    assert [h.name for h in lab.hosts] == ["here", "rack2"]
    here, rack = lab.hosts
    assert here.local and not rack.local
    assert rack.ram == 200 << 30 and rack.vcpus == 64 and rack.parallel == 8
    assert rack.pool == lab_file.DEFAULT_POOL


@pytest.mark.parametrize("text, line, words", [
    ("hosts:\n  - name: a\n    uri: qemu:///system\n    rma: 1G\n", 4, "unknown host key 'rma'"),
    ("hosts:\n  - name: a\n    uri: xen:///system\n", 3, "not a QEMU libvirt URI"),
    ("hosts:\n  - name: a\n    uri: qemu+ssh:///system\n", 3, "no host"),
    ("hosts:\n  - name: a\n    uri: qemu:///system\n    ram: lots\n", 4, "ram:"),
    ("hosts:\n  - name: a\n    uri: qemu:///system\n  - name: a\n    uri: qemu+unix:///system\n", 4, "used twice"),
    ("hosts:\n  - name: a\n    uri: qemu:///system\n  - name: b\n    uri: qemu:///system\n", 4, "same URI"),
    ("hosts:\n  - name: a\n", 2, "needs 'uri'"),
    ("hosts:\n  - name: ../x\n    uri: qemu:///system\n", 2, "not a host name"),
    ("hosts:\n  - name: a\n    uri: qemu+ssh://root@h/system\n    ssh_key: /nonexistent/key\n", 4, "no such file"),
    ("hosts: []\n", 1, "non-empty list"),
    ("host:\n  - name: a\n", 1, "'hosts:'"),
])
def test_lab_file_mistakes_name_file_and_line(tmp_path, text, line, words):
    path = tmp_path / "lab.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        lab_file.load(path)
    assert f"{path}:{line}:" in str(err.value), str(err.value)
    assert words in str(err.value)


def test_without_a_lab_file_the_lab_is_this_machine():
    lab = lab_file.default_lab()
    assert [(h.name, h.local) for h in lab.hosts] == [("local", True)]
    assert lab_file.default_lab("qemu:///session").hosts[0].uri == "qemu:///session"


def _scenario(ram_mib: int, vcpus: int = 1, n: int = 1) -> Scenario:
    return Scenario(kernel="debian-6.1", workload=WorkloadSpec(sga=16 * MiB, clients=n),
                    guest=GuestShape(memory=ram_mib * MiB, vcpus=vcpus), source=f"m.yaml:{n}")


@pytest.fixture
def hosts():
    lab = lab_file.LabFile(hosts=(
        lab_file.HostSpec(name="big", uri="qemu:///system", ram=2048 * MiB, parallel=4),
        lab_file.HostSpec(name="small", uri="qemu+unix:///system", ram=1024 * MiB, vcpus=2, parallel=4)))
    made = hosts_for(lab, run_id="20261201T000000-test", parallel=1)
    yield made
    for host in made:
        host.close()


def test_capacity_is_the_lab_files_limit_under_what_libvirt_says_is_free(hosts):
    big, small = hosts
    assert big.capacity().ram == 2048 * MiB and small.capacity().ram == 1024 * MiB
    assert small.capacity().vcpus == 2
    assert big.capacity().vcpus >= 2   # twice the host's CPUs
    assert "lab file limit" in big.capacity().detail


def test_largest_first_then_matrix_order():
    scenarios = [_scenario(256, n=1), _scenario(768, n=2), _scenario(256, vcpus=2, n=3), _scenario(768, n=4)]
    assert largest_first(scenarios) == [1, 3, 2, 0]


def test_best_fit_and_never_overcommit(hosts):
    big, small = hosts
    placement = Placement(hosts)
    # 512 MiB + 256 MiB QEMU = 768 MiB: leaves 256 on small, 1280 on big -> small (best fit)
    first = _scenario(512, n=1)
    assert placement.acquire(first) is small
    # small has 256 MiB left: the next one goes to big, twice; then nothing fits anywhere
    assert placement.acquire(_scenario(512, n=2)) is big
    assert placement.acquire(_scenario(512, n=3)) is big
    assert placement.acquire(_scenario(512, n=4)) is None
    placement.release(small, first)
    assert placement.acquire(_scenario(512, n=5)) is small


def test_slots_and_vcpus_limit_a_host(hosts):
    big, small = hosts
    placement = Placement([small])
    assert placement.acquire(_scenario(64, vcpus=2)) is small
    assert placement.acquire(_scenario(64, vcpus=1)) is None     # small allows 2 vCPUs at once
    one = Placement([small.__class__(lab_file.HostSpec(name="one", uri="qemu:///system", ram=4096 * MiB,
                                                       parallel=1), run_id="r", parallel=3)])
    host = one.hosts[0]
    try:
        assert one.acquire(_scenario(64)) is host
        assert one.acquire(_scenario(64)) is None                # parallel 1 there
    finally:
        host.close()


def test_a_scenario_larger_than_every_host_is_refused_naming_it_and_the_largest(hosts):
    too_big = _scenario(2048, n=7)   # 2 GiB + QEMU > big's 2 GiB
    placement = Placement(hosts)
    with pytest.raises(LimitError) as err:
        refuse_unplaceable(placement, [_scenario(256), too_big])
    text = str(err.value)
    assert "m.yaml:7" in text and too_big.scenario_id in text
    from mshare_lab.units import format_size
    assert f"the largest host, big, can give {format_size(2048 * MiB - QEMU_OVERHEAD)}" in text, text


def test_a_down_host_takes_nothing_and_a_kind_can_exclude_hosts(hosts):
    big, small = hosts
    big.mark_down("test")
    placement = Placement(hosts)
    assert placement.acquire(_scenario(512)) is small
    assert placement.candidates(_scenario(1024)) == []           # only big could, and it is down
    only_big = Placement(hosts, unsuitable=lambda h, s: "not here" if h.name == "small" else None)
    with pytest.raises(LimitError, match="no host of the lab can run .*small: not here"):
        refuse_unplaceable(only_big, [_scenario(256)])
