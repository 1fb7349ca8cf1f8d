"""Reach a remote libvirt host over SSH with the lab's key, checked host keys and keepalives.

The lab talks to a remote host only through libvirt's own remote protocol (no agent, no
scp): ``qemu+ssh://user@host/system`` makes libvirt run ``ssh`` and speak RPC over its
stdin/stdout. libvirt's defaults are not good enough for a lab, so ``connect_uri`` points
libvirt at a small wrapper script (the ``command=`` URI parameter) that runs ssh with:

- ``StrictHostKeyChecking=yes`` against a given known_hosts file: a host that is not the
  one the lab was told about is refused, never trusted on first use;
- ``ServerAliveInterval=2``/``ServerAliveCountMax=3``: a host that dies or whose network
  drops is noticed in about 6 s (ssh exits, the libvirt connection fails at once), instead
  of the TCP timeout of many minutes that would leave a run's scenarios hanging;
- ``ConnectTimeout`` and ``BatchMode=yes``: an unreachable host or a key that is refused
  fails fast with ssh's message, never waits at a password prompt;
- ``IdentitiesOnly=yes``: the lab's key (``keyfile=``) is the only one offered, so an
  agent's keys do not make a test pass that the lab's key would fail.

``public_uri`` is the URI as records and messages show it: no query, so no key paths.
``run_on_host`` runs one command with the same ssh options (the host record's
``uname -r``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

from ..errors import ConfigError, ProvisionError

#: URI parameters the lab sets itself; a user value would be silently overridden or
#: (no_verify=1) would switch off the host key check the lab relies on
_REFUSED_PARAMS = {
    "command": "the lab runs ssh through its own wrapper (keepalives, checked host keys)",
    "keyfile": "give the key as the host's ssh_key in the lab file",
}


@dataclass(frozen=True)
class SshTransport:
    key: Path                     # the lab's private key (0600)
    known_hosts: Path | None      # None: ssh's default (~/.ssh/known_hosts)
    keepalive_s: int = 2
    keepalive_count: int = 3
    connect_timeout_s: int = 10


def is_ssh_uri(uri: str) -> bool:
    return urlsplit(uri).scheme.endswith("+ssh")


def is_local_uri(uri: str) -> bool:
    """``qemu:///system``-like: no host part, libvirtd on this machine."""
    parts = urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return transport in ("", "unix") and not parts.hostname


def public_uri(uri: str) -> str:
    """The URI without query parameters or fragment: what records and messages show."""
    # string surgery, not urlunsplit: that turns qemu:///system into qemu:/system
    return uri.split("#", 1)[0].split("?", 1)[0]


def _ssh_config_value(path: Path) -> str:
    """A path as an ssh ``-o`` value: quoted (ssh splits UserKnownHostsFile on spaces) and
    with ``%`` doubled (ssh expands %-tokens in it)."""
    text = str(path).replace("%", "%%")
    if '"' in text:
        raise ConfigError(f"known_hosts path {path} contains a double quote, which ssh cannot take")
    return f'"{text}"'


def ssh_options(transport: SshTransport) -> list[str]:
    """The ``-o`` options of every ssh the lab runs to a host."""
    options = []
    if transport.known_hosts is not None:
        options += ["-o", f"UserKnownHostsFile={_ssh_config_value(transport.known_hosts)}"]
    options += [
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"ServerAliveInterval={transport.keepalive_s}",
        "-o", f"ServerAliveCountMax={transport.keepalive_count}",
        "-o", f"ConnectTimeout={transport.connect_timeout_s}",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
    ]
    return options


def _ssh_binary() -> str:
    path = shutil.which("ssh")
    if path is None:
        raise ProvisionError("ssh is not installed: a remote libvirt host needs the OpenSSH client",
                             hint="apt-get install openssh-client")
    return path


def write_wrapper(transport: SshTransport, workdir: Path) -> Path:
    """The executable script libvirt runs instead of ssh; named by its content, so hosts
    sharing ``workdir`` never overwrite each other's, and written atomically."""
    body = ("#!/bin/sh\n"
            "# written by mshare-lab (fleet/ssh_transport.py): libvirt's ssh with the lab's options\n"
            f"exec {shlex.join([_ssh_binary(), *ssh_options(transport)])} \"$@\"\n")
    digest = hashlib.sha256(body.encode()).hexdigest()[:12]
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"ssh-{digest}"
    if not (path.is_file() and path.read_text() == body and os.access(path, os.X_OK)):
        tmp = workdir / f".ssh-{digest}.{os.getpid()}.tmp"
        tmp.write_text(body)
        tmp.chmod(0o700)
        os.replace(tmp, path)
    return path


def connect_uri(uri: str, transport: SshTransport, workdir: Path) -> str:
    """The URI libvirt should open for ``uri``: ssh URIs get the lab's key and wrapper,
    every other URI is returned unchanged."""
    if not is_ssh_uri(uri):
        return uri
    parts = urlsplit(uri)
    if not parts.hostname:
        raise ConfigError(f"{public_uri(uri)}: an ssh libvirt URI needs a host (qemu+ssh://user@host/system)")
    # the user's parameters are kept as written (re-encoding would turn a '+' into a space)
    raw = [item for item in parts.query.split("&") if item]
    for item in raw:
        name, _, value = (unquote(word) for word in item.partition("="))
        if name in _REFUSED_PARAMS:
            raise ConfigError(f"{public_uri(uri)}: the URI parameter {name}= is not allowed",
                              hint=_REFUSED_PARAMS[name])
        if name == "no_verify" and value.strip() not in ("", "0"):
            raise ConfigError(f"{public_uri(uri)}: no_verify={value} would skip the host key check",
                              hint="add the host's key to the known_hosts file instead")
    wrapper = write_wrapper(transport, workdir)
    # libvirt unescapes parameter values, so a path with spaces survives as %20
    ours = urlencode([("keyfile", str(transport.key)), ("command", str(wrapper))], quote_via=quote, safe="/")
    query = "&".join([*raw, ours])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def ssh_argv(uri: str, transport: SshTransport, argv: list[str]) -> list[str]:
    """The ssh command line that runs ``argv`` on the host of an ssh URI."""
    parts = urlsplit(uri)
    command = [_ssh_binary(), *ssh_options(transport), "-i", str(transport.key), "-T"]
    if parts.port:
        command += ["-p", str(parts.port)]
    if parts.username:
        command += ["-l", parts.username]
    # ssh joins the remote words into one string for the remote shell: quote them
    return command + ["--", parts.hostname, shlex.join(argv)]


def run_on_host(uri: str, transport: SshTransport, argv: list[str], timeout: float) -> str:
    """stdout of ``argv`` run on the host of ``uri`` (here for a local URI)."""
    host = public_uri(uri)
    if is_local_uri(uri):
        command = list(argv)
    elif is_ssh_uri(uri):
        command = ssh_argv(uri, transport, argv)
    else:
        raise ConfigError(f"{host}: cannot run commands on a host reached this way",
                          hint="use a qemu+ssh:// URI for a remote host")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise ProvisionError(f"{host}: {shlex.join(argv)} did not finish in {timeout:g} s") from exc
    except OSError as exc:
        raise ProvisionError(f"{host}: cannot run {shlex.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        stderr = done.stderr.strip().splitlines()
        reason = " / ".join(stderr[-3:]) or f"exit status {done.returncode}"
        raise ProvisionError(f"{host}: {shlex.join(argv)} failed: {reason}")
    return done.stdout


def open_connection(uri: str, transport: SshTransport, workdir: Path):
    """``libvirt.open`` of ``connect_uri(uri, ...)``; a refusal (host key, key, network)
    becomes a ProvisionError naming the host and carrying ssh's message."""
    import libvirt

    try:
        return libvirt.open(connect_uri(uri, transport, workdir))
    except libvirt.libvirtError as exc:
        raise ProvisionError(f"{public_uri(uri)}: cannot connect: {exc.get_error_message()}") from exc
