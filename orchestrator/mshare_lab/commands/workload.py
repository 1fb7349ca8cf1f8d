"""CLI of the workload area: ``local`` (run on this host) and ``predict`` (arithmetic)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import options
from ..options import Option, WorkloadSpec
from ..results.location import results_location
from ..units import format_size, parse_size


def _size(value: Any) -> int:
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"'{value}' must be larger than 0")
    return size


PREDICT_OPTIONS = tuple(o for o in options.WORKLOAD_OPTIONS if o.key in ("mechanism", "sga", "clients")) + (
    Option("ram", _size, 512 << 30, "RAM of the machine the workload would run on", "SIZE"),
    Option("lab_ram", lambda v: None if v in (None, "") else _size(v), None,
           "guest RAM of a lab run: print the scaled-down scenario with the same pressure", "SIZE"),
)


def register(subparsers) -> None:
    local = subparsers.add_parser("local", help="run the SGA workload on this host's kernel",
                                  description="Run mshare-sga on this host: clients attach to one shared "
                                              "region, the page-table cost is measured.")
    options.add_arguments(local)
    local.add_argument("--json", type=Path, metavar="PATH", help="write the result document here")
    local.add_argument("--mshare-syscall-nr", metavar="NR,NR", help="mshare,mshare_unlink syscall numbers "
                       "of the running kernel (never guessed)")
    local.add_argument("--msharefs-ioctl-abi", choices=("2024", "2025"), help="msharefs ioctl ABI")
    local.add_argument("--ptshare-flag", metavar="HEX", help="MAP_SHARED_PT value (default 0x200000)")
    local.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    local.set_defaults(func=cmd_local)

    predict = subparsers.add_parser("predict", help="page-table bytes a region shared by many processes needs",
                                    description="Pure arithmetic: page tables needed without sharing, whether "
                                                "it fits in RAM, and a lab-sized scenario with the same pressure.")
    options.add_arguments(predict, PREDICT_OPTIONS)
    predict.add_argument("--json", type=Path, metavar="PATH", help="also write the prediction as JSON")
    predict.add_argument("--kernel", default=None, metavar="NAME",
                         help="use the per-client cost measured by earlier runs of this kernel")
    predict.add_argument("--image", choices=("micro", "debian"), default="micro",
                         help="guest image of the runs whose cost --kernel uses (default: micro)")
    predict.add_argument("--results", type=results_location, default=None, metavar="FILE|URL",
                         help="results store the measured cost is read from: a SQLite file or "
                              "postgresql://USER@HOST:PORT/DB (default: <lab home>/results.sqlite)")
    predict.set_defaults(func=cmd_predict)


def cmd_local(args: argparse.Namespace) -> int:
    from ..workload.feasibility import check_local
    from ..workload.local import progress_line, run_local

    spec = WorkloadSpec.from_args(args)
    # refused before anything is built or forked: the numbers and what fits
    check_local(spec)
    extra: list[str] = []
    if args.mshare_syscall_nr:
        extra += ["--mshare-syscall-nr", args.mshare_syscall_nr]
    if args.msharefs_ioctl_abi:
        extra += ["--msharefs-ioctl-abi", args.msharefs_ioctl_abi]
    if args.ptshare_flag:
        extra += ["--ptshare-flag", args.ptshare_flag]

    def show(event: dict) -> None:
        if not args.quiet:
            print(progress_line(event), file=sys.stderr, flush=True)

    result = run_local(spec, json_path=args.json, progress=show, extra_args=extra)
    for line in result.summary_lines():
        print(line)
    if args.json:
        print(f"result document: {args.json}")
    return 1 if result.outcome == "error" else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..workload.calibration import cost_from_file
    from ..workload.feasibility import ClientCost
    from ..workload.predict import SHARED_ONCE, predict

    cost = cost_from_file(results_location(args.results), args.kernel, args.image) if args.kernel \
        else ClientCost.builtin()
    p = predict(args.sga, args.clients, args.ram, args.mechanism, args.lab_ram, cost=cost)
    print(f"{p.clients} processes x {format_size(p.sga)} region ({p.mechanism}) on {format_size(p.ram)} RAM")
    print(f"page tables without sharing (4 KiB pages, 8 B/page/process): {format_size(p.theory_pte_bytes)} "
          f"(page tables / RAM = {p.pressure:.2f})")
    if p.mechanism in SHARED_ONCE:
        print(f"page tables with {p.mechanism} (one shared copy): {format_size(p.mechanism_pte_bytes)} "
              f"(shared page tables / RAM = {p.mechanism_pressure:.4f})")
    elif p.mechanism_pte_bytes != p.theory_pte_bytes:
        print(f"page tables with {p.mechanism}: {format_size(p.mechanism_pte_bytes)} "
              f"(page tables / RAM = {p.mechanism_pressure:.2f})")
    where = f" on {args.kernel} ({args.image})" if args.kernel else ""
    print(f"client cost{where}: {cost.describe()}")
    print(f"region + page tables + clients = {format_size(p.total_bytes)}: "
          f"{'fits' if p.fits else 'does NOT fit'} in {format_size(p.ram)}"
          + ("" if p.fits else f"; at most {p.largest_fitting_clients} clients fit"))
    if p.scaled:
        s = p.scaled
        print(f"lab scenario with the same pressure on {format_size(s.ram)}: --sga {format_size(s.sga)} "
              f"--clients {s.clients} -> {format_size(s.pagetable_bytes)} of page tables "
              f"(page tables / RAM = {s.pressure:.2f})")
    if args.json:
        args.json.write_text(json.dumps(p.to_dict(), indent=2) + "\n")
    return 0
