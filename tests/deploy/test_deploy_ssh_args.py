"""The SSH arguments Ansible gets survive a lab home with a space in its path.

Ansible shlex-splits ``ansible_ssh_extra_args`` and ssh splits UserKnownHostsFile's value
at spaces; ``ssh -G`` (which parses the options and connects nowhere) shows what ssh
would really use.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from mshare_lab.deploy.ansible import inventory
from mshare_lab.deploy.target import SshTarget


def test_known_hosts_path_with_a_space_reaches_ssh_whole(tmp_path):
    home = tmp_path / "lab home with spaces"
    home.mkdir()
    known, key = home / "known_hosts", home / "id_ed25519"
    known.write_text("")
    key.write_text("")
    target = SshTarget(name="g1", host="127.0.0.1", port=2222, user="root", key=key, known_hosts=known)
    host = inventory([target])["all"]["children"]
    (group,) = host.values()
    extra = group["hosts"]["g1"]["ansible_ssh_extra_args"]
    argv = ["ssh", "-G", *shlex.split(extra), "127.0.0.1"]
    config = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    line = next(l for l in config.splitlines() if l.startswith("userknownhostsfile "))
    assert line == f"userknownhostsfile {known}", line
    assert "stricthostkeychecking true" in config
