"""CLI commands of the deploy area: ``ssh`` and ``exec`` on running full guests."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import ConfigError, NotFoundError


def register(subparsers) -> None:
    ssh = subparsers.add_parser("ssh", help="interactive shell on a running full (Debian) guest",
                                description="Open a login shell on a running full guest over its "
                                            "127.0.0.1 port forward, with the lab key and its host key checked.")
    ssh.add_argument("guest", help="domain name (or a unique part of it) of a running guest")
    ssh.add_argument("--uri", default=None, help="libvirt URI (default: qemu:///system for root)")
    ssh.set_defaults(func=_ssh)

    run = subparsers.add_parser("exec", help="run a command on running full guests",
                                usage="mshare-lab exec [--uri URI] [--timeout S] (GUEST | --all) -- COMMAND...",
                                description="Run COMMAND on one running full guest or on all of them; "
                                            "each output line is prefixed with the guest's name. Exits "
                                            "non-zero when the command failed on any guest.")
    run.add_argument("--all", action="store_true", help="every running full guest")
    run.add_argument("--uri", default=None, help="libvirt URI (default: qemu:///system for root)")
    run.add_argument("--timeout", type=float, default=120.0, help="seconds per guest (default: 120)")
    run.add_argument("words", nargs=argparse.REMAINDER, metavar="GUEST -- COMMAND")
    run.set_defaults(func=_exec)


def split_exec_words(words: list[str], all_guests: bool) -> tuple[str | None, list[str]]:
    """``[GUEST] [--] COMMAND...`` -> (guest or None, command words)."""
    words = list(words)
    guest = None
    if not all_guests:
        if not words or words[0] == "--":
            raise ConfigError("name a guest or give --all", hint="mshare-lab exec GUEST -- uname -r")
        guest = words.pop(0)
    if words and words[0] == "--":
        words.pop(0)
    if not words:
        raise ConfigError("no command given", hint="mshare-lab exec --all -- uname -r")
    return guest, words


def _ssh(args: argparse.Namespace) -> int:
    from ..deploy import discovery, fabric_ops
    target = discovery.find(args.guest, args.uri)
    return fabric_ops.shell(target)


def _exec(args: argparse.Namespace) -> int:
    from ..deploy import discovery, fabric_ops
    guest, words = split_exec_words(args.words, args.all)
    targets = discovery.running_targets(args.uri) if args.all else [discovery.find(guest, args.uri)]
    if not targets:
        raise NotFoundError("no running full guest", hint="full guests run during `image: debian` scenarios")
    # one word is taken as a shell command line as typed; several are quoted word by word
    command = words[0] if len(words) == 1 else shlex.join(words)
    results = fabric_ops.exec_all(targets, command, timeout=args.timeout)
    for result in results:
        for line in result.prefixed_lines():
            print(line, file=sys.stdout if result.ok else sys.stderr)
    return 0 if all(r.ok for r in results) else 1
