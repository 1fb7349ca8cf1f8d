"""Fixtures of the fleet area's tests (helpers in fleet_helpers.py): a remote libvirt host here.

``ssh_libvirt_host`` is this machine's libvirtd reached as a remote host: a real OpenSSH
server on 127.0.0.1 (the deploy tests' loopback sshd, root login with a test key) and
``qemu+ssh://root@127.0.0.1:PORT/system`` opened through ``ssh_transport.connect_uri``.
The lab's key, known_hosts and the wrapper dir are copied under a directory whose name
has a space, so every test also checks the quoting of paths in the URI and the wrapper.
``fleet_helpers.cut_connection(sshd)`` kills the sshd and its per-connection children: what a host
that dies looks like from the lab.

``fleet_pool`` is a throw-away storage pool (own name, tmp dir) for the session; it is
destroyed and undefined afterwards, its volumes deleted after every test that used it.
"""

from __future__ import annotations

import secrets

import pytest

from fleet_helpers import ScratchPool, remove_pool, start_ssh_libvirt_host, stop_ssh_libvirt_host
from mshare_lab.fleet.volumes import HostVolumes


@pytest.fixture(scope="session")
def ssh_libvirt_host(tmp_path_factory):
    host = start_ssh_libvirt_host(tmp_path_factory.mktemp("ssh-host"))
    try:
        yield host
    finally:
        stop_ssh_libvirt_host(host)


@pytest.fixture
def disposable_ssh_libvirt_host(tmp_path):
    """A host of its own, for a test that cuts its connection."""
    host = start_ssh_libvirt_host(tmp_path)
    try:
        yield host
    finally:
        stop_ssh_libvirt_host(host)


@pytest.fixture(scope="session")
def fleet_pool(tmp_path_factory):
    pool = ScratchPool(f"mshare-lab-test-{secrets.token_hex(3)}", str(tmp_path_factory.mktemp("pool") / "pool"))
    try:
        yield pool
    finally:
        remove_pool(pool.name)


@pytest.fixture(scope="session")
def ssh_conn(ssh_libvirt_host):
    return ssh_libvirt_host.open()


@pytest.fixture
def volumes(ssh_conn, fleet_pool):
    """HostVolumes of the throw-away pool over the ssh connection, fresh counters; every
    volume is deleted after the test."""
    vols = HostVolumes(ssh_conn, fleet_pool.path, fleet_pool.name, stall_s=0.5)
    vols.ensure_pool()
    try:
        yield vols
    finally:
        pool = vols.ensure_pool()
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
