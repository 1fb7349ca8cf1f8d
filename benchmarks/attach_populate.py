#!/usr/bin/env python3
"""Attach+populate time of N self-attaching clients against the fork-and-touch floor.

The floor (``mshare-sga floor``) is the least work N processes can do to map and touch
the same region: they inherit one mapping through fork and populate it, with no attach,
barrier or header.  The ratio says what the workload's realism (each client attaching by
itself through the mechanism's API) costs over that floor.  Runs alternate floor/workload
so background load on the machine hits both alike.

    .venv/bin/python benchmarks/attach_populate.py --mechanism shmem --sga 256M --clients 100 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from mshare_lab.options import WorkloadSpec
from mshare_lab.units import format_size, parse_size
from mshare_lab.workload.build import ensure_binary
from mshare_lab.workload.local import run_local


def floor_seconds(binary, sga: int, clients: int) -> float:
    proc = subprocess.run([str(binary), "floor", "--sga", str(sga), "--clients", str(clients)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mechanism", default="shmem")
    parser.add_argument("--sga", default="256M", type=parse_size)
    parser.add_argument("--clients", default="100", help="comma-separated client counts")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binary = ensure_binary()
    print(f"mechanism {args.mechanism}, region {format_size(args.sga)}, {args.repeat} repeats (median)")
    print(f"{'clients':>8} {'floor s':>9} {'workload s':>11} {'ratio':>7}")
    for clients in (int(c) for c in args.clients.split(",")):
        floors, works = [], []
        for _ in range(args.repeat):
            floors.append(floor_seconds(binary, args.sga, clients))
            result = run_local(WorkloadSpec(mechanism=args.mechanism, sga=args.sga, clients=clients,
                                            duration=0.0), binary=binary)
            if result.outcome != "completed":
                print(f"workload run ended {result.outcome}: {result.reason}", file=sys.stderr)
                return 1
            works.append(result.attach_populate_s)
        f, w = statistics.median(floors), statistics.median(works)
        print(f"{clients:>8} {f:>9.3f} {w:>11.3f} {w / f:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
