"""The KVM probe: on this host KVM guests do not boot, so the verdict is TCG, fast and cached."""

from __future__ import annotations

import json
import os
import time

import pytest

from mshare_lab.guest import probe, testing
from mshare_lab.guest.libvirt_driver import LibvirtDriver

pytestmark = pytest.mark.vm


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "domain-type.json"
    monkeypatch.setattr(probe, "cache_path", lambda: path)
    return path


def test_probe_falls_back_to_tcg_within_seconds_and_caches_the_verdict(cache):
    kernel = testing.debian_kernel()
    with LibvirtDriver() as driver:
        started = time.monotonic()
        verdict = probe.probe_domain_type(driver, kernel=kernel, force=True)
        took = time.monotonic() - started
        # this machine: /dev/kvm exists but a KVM guest never prints a kernel line
        assert verdict.domain_type == "qemu", verdict.reason
        assert "KVM probe guest" in verdict.reason
        assert took < 60
        assert not verdict.cached
        stored = json.loads(cache.read_text())[driver.display_uri]   # one verdict per host URI
        assert stored["domain_type"] == "qemu" and stored["host_release"] == os.uname().release
        assert stored["uri"] == driver.uri

        started = time.monotonic()
        again = probe.probe_domain_type(driver)   # no kernel needed: the cache answers
        assert again.cached and again.domain_type == "qemu"
        assert time.monotonic() - started < 1.0
        assert driver.probe_domain_type() == "qemu"

        # probe guests leave nothing
        assert not testing.qemu_processes_of({driver.run_id})
        assert not [n for n, meta, _ in driver.lab_domains() if meta and meta.run_id == driver.run_id]
        driver.remove_scratch()


def test_a_cached_verdict_of_another_host_kernel_is_ignored(cache, monkeypatch):
    cache.write_text(json.dumps({"domain_type": "kvm", "reason": "x", "host_release": "0.0-other",
                                 "uri": "qemu:///system", "checked_at": time.time(), "probe_seconds": 1.0}))
    with LibvirtDriver("qemu:///system") as driver:
        assert probe._read_cache(driver.uri, os.uname().release) is None
        assert probe._read_cache(driver.uri, "0.0-other").domain_type == "kvm"


def test_tcg_boot_probe_sees_kernel_output():
    """The same probe under TCG does see the kernel: the KVM verdict is not a broken probe."""
    with LibvirtDriver() as driver:
        seen, detail = probe.boot_probe(driver, testing.debian_kernel(), domain_type="qemu", deadline=60)
        driver.remove_scratch()
    assert seen, detail
