"""``mshare-lab report``: the results store as one self-contained HTML lab report."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..results import compare as compare_mod
from ..results.location import results_location
from ..units import format_seconds, format_size


def register(subparsers) -> None:
    report = subparsers.add_parser(
        "report", help="write an HTML lab report (tables and plots, one file, no network needed)",
        description="Write one self-contained HTML file from the results store: header, outcome table, "
                    "theory plot, page tables over time, comparison, OOM map, protection change.")
    report.add_argument("--results", type=results_location, default=None, metavar="FILE|URL",
                        help="results store: a SQLite file or postgresql://USER@HOST:PORT/DB "
                             "(default: <lab home>/results.sqlite)")
    report.add_argument("--runs", default=None, metavar="SELECTOR",
                        help="which runs: comma-separated run ids, scenario or point ids, globs over "
                             "them, or last:N (default: every run)")
    report.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                        help="the HTML file to write (default: the results file with .html; "
                             "<lab home>/DATABASE.html for a PostgreSQL store)")
    report.add_argument("--by", choices=compare_mod.AXES, default=None,
                        help="the comparison's axis (default: kernel when runs have several, else mechanism)")
    report.add_argument("--baseline", default=None, metavar="NAME", help="the comparison's baseline group")
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import data, page
    from .results import open_store

    started = time.monotonic()
    with open_store(args.results) as store:
        gathered = data.gather(store, args.runs)
        location = store.location
    # beside a results file; in the lab home for a server
    out = args.output or location.report_path()
    page.write(gathered, out, by=args.by, baseline=args.baseline)
    print(f"wrote {out} ({len(gathered.runs)} run(s), {format_size(out.stat().st_size)}, "
          f"{format_seconds(time.monotonic() - started)})", file=sys.stderr)
    print(out)
    return 0
