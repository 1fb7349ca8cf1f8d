"""``mshare-lab bisect``: find the commit that changed what a scenario sees (lab.bisect)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bisect", help="git bisect run with the lab as the test: build, boot, run a scenario, judge",
        description="Bisect a kernel git repository: each step builds the commit (incrementally, ccache), "
                    "runs one scenario in a micro guest and judges it by the matrix's expectation keys; "
                    "a commit that does not build, or an infra error, is skipped. The repository is only read.")
    parser.add_argument("--source", required=True, type=Path, metavar="REPO", help="kernel git repository (a path)")
    parser.add_argument("--good", required=True, metavar="REF", help="a commit where the scenario meets --expect")
    parser.add_argument("--bad", required=True, metavar="REF", help="a later commit where it does not")
    parser.add_argument("--scenario", required=True, metavar="'k=v, ...'",
                        help="matrix keys of the one scenario: 'mechanism=shmem, sga=32M, clients=10, ram=1G'")
    parser.add_argument("--expect", required=True, metavar="'k=v, ...'",
                        help="matrix expectation keys: 'outcome=completed, kernel_log=clean, pte_ratio_max=0.1'")
    parser.add_argument("--fragment", action="append", default=[], metavar="F", help="Kconfig fragment; repeatable")
    parser.add_argument("--uri", default=None, help="libvirt URI (default: the lab's)")
    parser.set_defaults(func=_bisect)


def _bisect(args: argparse.Namespace) -> int:
    from ..lab.bisect import BisectRequest, bisect
    from ..lab.single import parse_pairs

    request = BisectRequest(args.source, args.good, args.bad, parse_pairs(args.scenario, what="--scenario"),
                            parse_pairs(args.expect, what="--expect"), tuple(args.fragment), args.uri)
    result = bisect(request)
    print(f"first bad commit: {result.first_bad.commit} {result.first_bad.subject}")
    print(f"  bad:  {result.first_bad.describe()}")
    print(f"  good: {result.last_good.describe()}")
    print(f"steps ({len(result.steps)}):")
    for step in result.steps:
        print(f"  {step.describe()}")
    return 0
