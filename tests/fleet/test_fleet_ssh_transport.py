"""ssh_transport: the qemu+ssh URI the lab opens, against a real loopback sshd."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import libvirt
import pytest

from fleet_helpers import cut_connection, sshd_children
from deploy_helpers import processes_mentioning
from mshare_lab.errors import ConfigError, ProvisionError
from mshare_lab.fleet.ssh_transport import (SshTransport, connect_uri, open_connection, public_uri,
                                            run_on_host)

TRANSPORT = SshTransport(key=Path("/k/lab key"), known_hosts=Path("/k/known hosts"))


def test_connect_uri_adds_key_and_wrapper_keeps_user_params(tmp_path):
    uri = connect_uri("qemu+ssh://root@host.example:2222/system?no_tty=1&socket=/run/x%20y+z.sock",
                      TRANSPORT, tmp_path / "w d")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == ("qemu+ssh", "root@host.example:2222", "/system")
    assert parts.query.startswith("no_tty=1&socket=/run/x%20y+z.sock&keyfile=")
    params = parse_qs(parts.query.replace("+", "%2B"))
    assert params["no_tty"] == ["1"]
    assert params["socket"] == ["/run/x y+z.sock"]
    assert params["keyfile"] == ["/k/lab key"]
    wrapper = Path(params["command"][0])
    assert wrapper.parent == tmp_path / "w d" and os.access(wrapper, os.X_OK)
    exec_line = wrapper.read_text().splitlines()[-1]
    words = shlex.split(exec_line)
    assert words[0] == "exec" and words[1].endswith("/ssh") and words[-1] == "$@"
    options = [words[i + 1] for i, w in enumerate(words) if w == "-o"]
    assert options == ['UserKnownHostsFile="/k/known hosts"', "StrictHostKeyChecking=yes",
                       "ServerAliveInterval=2", "ServerAliveCountMax=3", "ConnectTimeout=10",
                       "BatchMode=yes", "IdentitiesOnly=yes"]
    # the same options give the same wrapper; other options another one
    assert connect_uri("qemu+ssh://h/system", TRANSPORT, tmp_path / "w d").endswith(
        "command=" + str(wrapper).replace(" ", "%20"))
    other = connect_uri("qemu+ssh://h/system", SshTransport(TRANSPORT.key, None, keepalive_s=5), tmp_path / "w d")
    assert "UserKnownHostsFile" not in Path(parse_qs(urlsplit(other).query)["command"][0]).read_text()


def test_connect_uri_leaves_other_uris_alone(tmp_path):
    for uri in ("qemu:///system", "qemu:///session", "qemu+tcp://h/system", "test:///default"):
        assert connect_uri(uri, TRANSPORT, tmp_path) == uri
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("query, word", [("command=/bin/ssh", "command="), ("no_verify=1", "no_verify=1"),
                                         ("keyfile=/root/.ssh/id", "keyfile="),
                                         ("no_verify=yes", "no_verify=yes")])
def test_connect_uri_refuses_what_would_bypass_the_lab(tmp_path, query, word):
    with pytest.raises(ConfigError, match=word) as caught:
        connect_uri(f"qemu+ssh://root@h/system?{query}", TRANSPORT, tmp_path)
    assert "/root/.ssh/id" not in str(caught.value) and "/bin/ssh" not in str(caught.value)


def test_public_uri_strips_keys():
    assert public_uri("qemu+ssh://root@h:22/system?keyfile=/k/key&command=/w/ssh") == "qemu+ssh://root@h:22/system"
    assert public_uri("qemu:///system") == "qemu:///system"


def test_libvirt_over_ssh_with_quoted_paths(ssh_libvirt_host):
    assert " " in str(ssh_libvirt_host.transport.key) and " " in str(ssh_libvirt_host.workdir)
    conn = ssh_libvirt_host.open()
    assert conn.getURI().startswith(ssh_libvirt_host.uri)
    assert conn.getHostname() == socket.gethostname()
    # the lab's ssh really runs: through the wrapper, with the lab's key
    wrapper = Path(parse_qs(urlsplit(ssh_libvirt_host.connect_uri()).query)["command"][0])
    running = processes_mentioning(str(ssh_libvirt_host.transport.known_hosts))
    assert any("StrictHostKeyChecking=yes" in line and "ServerAliveInterval=2" in line for line in running), running
    assert wrapper.is_file()


def test_run_on_host_over_ssh_and_locally(ssh_libvirt_host):
    host = ssh_libvirt_host
    assert run_on_host(host.uri, host.transport, ["uname", "-r"], timeout=30).strip() == os.uname().release
    assert run_on_host("qemu:///system", host.transport, ["uname", "-r"], 30).strip() == os.uname().release
    # words survive the remote shell as they are
    assert run_on_host(host.uri, host.transport, ["printf", "%s|", "a b", "$HOME", "'q'"], 30) == "a b|$HOME|'q'|"
    with pytest.raises(ProvisionError, match=r"qemu\+ssh://root@127.0.0.1:\d+/system: ls /nonexistent failed: .*No such file"):
        run_on_host(host.uri, host.transport, ["ls", "/nonexistent"], 30)


def test_a_wrong_host_key_is_refused(ssh_libvirt_host, tmp_path):
    host = ssh_libvirt_host
    other = tmp_path / "known_hosts"
    # the right host and port with another key: what a replaced (or spoofed) host looks like
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    other.write_text(f"[127.0.0.1]:{host.sshd.port} " + " ".join((tmp_path / "k.pub").read_text().split()[:2]) + "\n")
    wrong = type(host.transport)(key=host.transport.key, known_hosts=other)
    started = time.monotonic()
    with pytest.raises(ProvisionError, match="Host key verification failed") as caught:
        open_connection(host.uri, wrong, tmp_path / "w")
    assert str(caught.value).startswith(f"{host.uri}: cannot connect")
    assert str(host.transport.key) not in str(caught.value)
    with pytest.raises(ProvisionError, match="Host key verification failed"):
        run_on_host(host.uri, wrong, ["true"], 30)
    # an empty known_hosts is refused too: no trust on first use
    other.write_text("")
    with pytest.raises(ProvisionError, match="Host key verification failed"):
        open_connection(host.uri, wrong, tmp_path / "w")
    assert time.monotonic() - started < 10


def test_connection_dies_at_once_when_the_host_is_gone(disposable_ssh_libvirt_host):
    host = disposable_ssh_libvirt_host
    conn = host.open()
    assert conn.getHostname() == socket.gethostname()
    cut_connection(host.sshd)
    started = time.monotonic()
    with pytest.raises(libvirt.libvirtError):
        conn.listAllDomains(0)
    assert time.monotonic() - started < 3
    host.close()
    assert processes_mentioning(str(host.transport.known_hosts)) == []


def test_a_hung_host_is_noticed_by_the_keepalives(disposable_ssh_libvirt_host):
    """The host stops answering but the TCP connection stays up (a frozen machine, a
    dropped route): only ServerAlive notices it, after interval x count = 6 s."""
    host = disposable_ssh_libvirt_host
    conn = host.open()
    assert conn.getHostname() == socket.gethostname()
    session = sshd_children(host.sshd)
    assert session, "no per-connection sshd"
    for pid in session:
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        with pytest.raises(libvirt.libvirtError):
            conn.listAllDomains(0)
        waited = time.monotonic() - started
    finally:
        for pid in session:
            os.kill(pid, signal.SIGCONT)
    assert 3 < waited < 10, waited
    host.close()
    assert processes_mentioning(str(host.transport.known_hosts)) == []
