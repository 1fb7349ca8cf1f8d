"""The ``mshare-lab`` command line.

Each area of the lab registers its own subcommands from ``mshare_lab.commands.<area>``
(a module with ``register(subparsers)``), so the CLI reads like the architecture and
areas can grow without touching each other. A ``LabError`` becomes one line on stderr
and its family's exit code (2 for user errors, 1 for infrastructure errors).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from . import __version__
from .errors import LabError

COMMAND_MODULES = (
    "workload",   # local, predict
    "kernel",     # kernel build|fetch|list|show
    "bisect",     # bisect (git bisect run with the lab as the test)
    "image",      # image build|list
    "lab",        # run, doctor, gc
    "results",    # results list|show|export, compare
    "report",     # report (HTML)
    "deploy",     # ssh, exec
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mshare-lab",
        description="Prove, break and measure page-table sharing across processes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"{__package__}.commands.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    try:
        return int(args.func(args) or 0)
    except LabError as exc:
        print(f"mshare-lab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # `mshare-lab results export --csv | head`: the reader left; not an error of ours
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("mshare-lab: interrupted; cleaned up what this run started", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
