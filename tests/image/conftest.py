"""Fixtures of the image area's tests: the test kernel, the workload binary, a guest driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from mshare_lab.kernel.progress import quiet


@pytest.fixture(scope="session")
def debian_kernel():
    """The stock Debian cloud kernel (fetched once, cached in the lab home)."""
    from mshare_lab.kernel.fetch import fetch_debian
    return fetch_debian(quiet)


@pytest.fixture(scope="session")
def workload_binary() -> Path:
    """The real static mshare-sga, built by the workload area."""
    from mshare_lab.workload.build import ensure_binary
    return ensure_binary()


@pytest.fixture
def driver():
    """A libvirt driver on the default connection; its scratch space removed afterwards."""
    from mshare_lab.guest.libvirt_driver import LibvirtDriver
    with LibvirtDriver() as drv:
        try:
            yield drv
        finally:
            drv.remove_scratch()

