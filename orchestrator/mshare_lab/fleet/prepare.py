"""``mshare-lab lab prepare``: make a fresh Debian machine a libvirt host of the lab.

The work is an Ansible play (``ansible/lab_host.yml``, role ``lab_host``) run through the
deploy area's ``run_playbook`` (ansible-runner, its cancel and leftover handling), one
play per host so each host's result and log stand alone:

* a ``qemu+ssh://user@host:port/system`` host is reached over SSH with the same key and
  known_hosts file as its libvirt connection (``Host.transport()``), user and port from
  the URI, host keys checked;
* a local host (``qemu:///system``) is this machine: the play runs with Ansible's local
  connection, no SSH. ``run_playbook`` takes SSH targets only, so the local host is given
  as one and the ``ansible_connection=local`` extra var (extra vars win over inventory
  variables) makes Ansible ignore its SSH settings.

After the play a remote host's storage pool is defined (through libvirt, the way runs use
it) so that ``doctor`` can report its disk, and the doctor checks run for the host.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..deploy.target import SshTarget
from ..errors import ProvisionError
from .host import Host

PLAYBOOK = "lab_host.yml"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class PrepareResult:
    host: str
    connection: str                      # "ssh" or "local"
    elapsed_s: float                     # the play's wall time
    stats: dict[str, int]                # Ansible's per-host counters: ok, changed, skipped, ...
    changed: tuple[str, ...]             # names of the tasks that changed something
    log: Path                            # the play's stdout
    pool: str | None = None              # the remote pool defined (name), None for a local host
    via: str = ""                        # how the play reached the host, as the host saw it

    def summary(self) -> str:
        counts = ", ".join(f"{key} {self.stats.get(key, 0)}" for key in ("ok", "changed", "skipped", "failures"))
        return f"host {self.host}: play over {self.connection} ({self.via}) in {self.elapsed_s:.1f} s ({counts})"


def play_target(host: Host, workdir: Path) -> tuple[SshTarget, dict[str, str]]:
    """The inventory entry of ``host`` and the extra vars that choose its connection."""
    spec = host.spec
    if spec.local:
        # run_playbook insists on key and known_hosts files; the local connection reads neither
        placeholder = workdir / "local-connection-uses-no-ssh"
        placeholder.write_text("")
        return (SshTarget(name=spec.name, host="localhost", port=22, key=placeholder, known_hosts=placeholder),
                {"ansible_connection": "local"})
    parts = urlsplit(spec.uri)
    transport = host.transport()
    known_hosts = transport.known_hosts or Path.home() / ".ssh" / "known_hosts"
    return (SshTarget(name=spec.name, host=parts.hostname or "", port=parts.port or 22, key=transport.key,
                      known_hosts=known_hosts, user=parts.username or "root"),
            {})


def prepare_host(host: Host, *, hugepages: int | None = None, progress: Progress | None = None,
                 timeout: float = 1800.0) -> PrepareResult:
    """Run the lab_host play on ``host``; raise the play's error (PlaybookError names the
    failed task and quotes its stderr, GuestUnreachableError an SSH failure)."""
    from ..deploy.ansible import GuestUnreachableError, run_playbook
    ident = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    # a private data dir per play: ansible-runner keeps the first run's env/envvars in it,
    # and a reused one would send the next play's ssh to the previous play's ControlMaster
    # dir, which the deploy area's cleanup then no longer sees
    workdir = host.workdir() / "prepare" / ident
    workdir.mkdir(parents=True, exist_ok=True)
    target, connection_vars = play_target(host, workdir)
    extravars: dict[str, object] = {"lab_host_pool": host.spec.pool, **connection_vars}
    if hugepages is not None:
        extravars["lab_host_hugepages"] = hugepages
    try:
        result = run_playbook([target], workdir=workdir, extravars=extravars, playbook=PLAYBOOK,
                              progress=progress, timeout=timeout, ident=ident)
    except GuestUnreachableError as exc:
        # (deploy's error speaks of guests; here it is a lab host)
        raise ProvisionError(f"host {host.name} is unreachable over SSH ({target.user}@{target.address}): "
                             f"{exc.message.split(': ', 1)[-1]}",
                             hint="check that the host is up, its sshd answers and the lab file's ssh_key "
                                  "and known_hosts are right") from exc
    tasks = result.task_results.get(target.name, {})
    changed = tuple(name for name, res in tasks.items() if res.get("changed"))
    pool = define_pool(host) if host.remote else None
    return PrepareResult(via=_via(tasks), host=host.name, connection="local" if host.spec.local else "ssh",
                         elapsed_s=result.elapsed_s, stats=dict(result.host_stats.get(target.name, {})),
                         changed=changed, log=result.artifact_dir / "stdout", pool=pool)


#: the first task of the role reports $SSH_CONNECTION as ``via=``
STATE_TASK = "Read the installed packages, the init process, the running daemons and /dev/kvm"


def _via(tasks: dict) -> str:
    """``ssh from 127.0.0.1:40312 to 127.0.0.1:2222`` (the host's own $SSH_CONNECTION) or ``local``."""
    match = re.search(r"^via=(.*)$", str((tasks.get(STATE_TASK) or {}).get("stdout", "")), re.M)
    words = match.group(1).split() if match else []
    if len(words) == 4:
        return f"ssh from {words[0]}:{words[1]} to {words[2]}:{words[3]}"
    return words[0] if words else "unknown"


def define_pool(host: Host) -> str:
    """Define and start the host's storage pool now (runs would on first upload)."""
    from ..guest.host_files import pool_name_for
    from .volumes import HostVolumes
    name = pool_name_for(host.spec.pool)
    HostVolumes(host.driver.conn, host.spec.pool, name).ensure_pool()
    return name
