"""``mshare-lab results list|show|export|import`` and ``mshare-lab compare``: read the results store.

``--results`` is a SQLite file or a ``postgresql://`` URL (results.location decides which)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import NotFoundError, UserError
from ..lab.record import RunRecord
from ..lab.scenario import OUTCOMES
from ..results import compare as compare_mod
from ..results import export
from ..results.location import ResultsLocation, existing, results_location
from ..results.store import ResultStore
from ..units import format_metric, format_seconds, format_size, metric_formatter


def register(subparsers) -> None:
    results = subparsers.add_parser("results", help="list, show and export stored runs")
    sub = results.add_subparsers(dest="results_command", metavar="ACTION", required=True)

    listing = sub.add_parser("list", help="one line per stored run")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=None, metavar="N", help="at most N runs (the latest)")
    listing.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="everything stored about one run")
    show.add_argument("run_id", metavar="RUN_ID")
    _results_file(show)
    show.set_defaults(func=cmd_show)

    exporting = sub.add_parser("export", help="write runs as CSV (one row per run) or JSON (full records)")
    kind = exporting.add_mutually_exclusive_group(required=True)
    kind.add_argument("--csv", dest="format", action="store_const", const="csv")
    kind.add_argument("--json", dest="format", action="store_const", const="json")
    exporting.add_argument("-o", "--output", type=Path, default=None, metavar="FILE",
                           help="write here instead of stdout")
    _filters(exporting)
    exporting.set_defaults(func=cmd_export)

    importing = sub.add_parser("import", help="add runs from a JSON file (a run's record.json, or "
                                              "the output of 'results export --json') or merge a local "
                                              "SQLite store (runs already there are skipped)")
    importing.add_argument("files", type=Path, nargs="+", metavar="FILE.json|FILE.sqlite")
    _results_file(importing)
    importing.set_defaults(func=cmd_import)

    comparing = subparsers.add_parser(
        "compare", help="kernels or mechanisms side by side (mean ± sd, Welch's t-test vs a baseline)")
    comparing.add_argument("--by", choices=compare_mod.AXES, default="kernel",
                           help="the axis to compare; the other scenario dimensions are held equal")
    comparing.add_argument("--baseline", default=None, metavar="NAME",
                           help="the group the others are tested against (default: the first one run)")
    comparing.add_argument("--metric", dest="metrics", action="append", default=None, metavar="M",
                           help="metric to compare, repeatable (default: " + ", ".join(compare_mod.DEFAULT_METRICS) + ")")
    comparing.add_argument("--format", choices=("table", "email"), default="table",
                           help="table (default) or email: kernels as columns, at most 72 columns, with "
                                "the lab version and the commands to reproduce, for a mailing list")
    _filters(comparing)
    comparing.set_defaults(func=cmd_compare)


def _results_file(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=results_location, default=None, metavar="FILE|URL",
                        help="results store: a SQLite file or postgresql://USER@HOST:PORT/DB "
                             "(default: <lab home>/results.sqlite)")


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernel", default=None, metavar="K")
    parser.add_argument("--mechanism", default=None, metavar="M")
    parser.add_argument("--outcome", default=None, choices=OUTCOMES)
    parser.add_argument("--scenario", default=None, metavar="ID",
                        help="a scenario id, a point id (id without #repeat) or a glob")
    _results_file(parser)


@contextlib.contextmanager
def open_store(location: ResultsLocation | Path | str | None) -> Iterator[ResultStore]:
    """The store to read; a missing file is an error, not a new empty database."""
    store = ResultStore(existing(results_location(location)))
    try:
        yield store
    finally:
        store.close()


def _selected(store: ResultStore, args: argparse.Namespace) -> list[RunRecord]:
    return store.runs(kernel=args.kernel, mechanism=args.mechanism, outcome=args.outcome,
                      scenario=args.scenario)


def cmd_list(args: argparse.Namespace) -> int:
    with open_store(args.results) as store:
        records = _selected(store, args)
    if args.limit is not None:
        records = records[-args.limit:] if args.limit > 0 else []
    rows = [("RUN", "SCENARIO", "OUTCOME", "PTE RATIO", "GUEST TIME", "EXPECT", "REASON")]
    for r in records:
        ratio = r.metric("pte_ratio")
        rows.append((r.run_id or "", r.scenario_id, r.outcome,
                     f"{ratio:.3f}" if isinstance(ratio, (int, float)) else "-",
                     format_seconds(r.guest_seconds),
                     f"{len(r.expectation_failures)} failed" if r.expectation_failures else "met",
                     _short(r.reason or "")))
    print(_table(rows))
    print(f"{len(records)} run(s)")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_store(args.results) as store:
        record = store.get(args.run_id)
        metrics = store.metrics(args.run_id)
        series = store.timeseries(args.run_id)
    write_record(record, metrics, series, sys.stdout)
    return 0


def write_kernel_log(record: RunRecord, out: TextIO) -> None:
    """The kernel's complaints: one line per kind, then the first excerpt of each."""
    log = record.kernel_log
    if log is None:
        return
    print(f"kernel log {log.describe().removeprefix('kernel log: ')}"
          + (f" [from {log.source}]" if log.source != "none" else ""), file=out)
    if log.crash_title:
        print(f"           crash: {log.crash_title}", file=out)
    for finding in log.findings:
        where = f" in {finding.phase}" if finding.phase else " (phase unknown: not on the console)"
        print(f"  {finding.kind}: {finding.count} line(s), first{where}:", file=out)
        for line in finding.excerpt.splitlines():
            print(f"    | {line}", file=out)


def write_record(record: RunRecord, metrics: dict[str, float], series: dict[str, list], out: TextIO) -> None:
    s = record.scenario
    w, g = s.workload, s.guest
    print(f"run        {record.run_id}", file=out)
    print(f"scenario   {s.scenario_id}  (from {s.source or 'command line'})", file=out)
    print(f"workload   {w.mechanism}, region {format_size(w.sga)}, {w.clients} clients, {w.duration:g} s, "
          f"populate {w.populate:g}, write share {w.write_share:g}"
          + (f", memory limit {format_size(w.memory_limit)}" if w.memory_limit else ""), file=out)
    print(f"guest      {g.image}, {format_size(g.memory)} RAM, {g.vcpus} vCPUs, timeout {g.timeout:g} s"
          + (", host huge pages" if g.hugepage_backing else ""), file=out)
    release = record.kernel_metadata.get("release") or record.metric("kernel_release") or "?"
    print(f"kernel     {s.kernel} ({release})", file=out)
    if record.host:
        from ..fleet.host_record import HostRecord
        host = HostRecord.from_dict(record.host)
        print(f"host       {host.describe()}, {host.uri}", file=out)
    for failure in record.host_failures:
        import time
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(failure.get("at") or 0)))
        print(f"           moved here after host {failure.get('host')} failed at {when}: "
              f"{(str(failure.get('reason') or '').strip().splitlines() or [''])[0][:200]}",
              file=out)
    print(f"outcome    {record.outcome}" + (f": {record.reason}" if record.reason else ""), file=out)
    write_kernel_log(record, out)
    print(f"times      wall {format_seconds(record.wall_seconds)}, guest {format_seconds(record.guest_seconds)}, "
          f"overhead {format_seconds(record.overhead_seconds)}, attempts {record.attempts}", file=out)
    if s.expect:
        verdict = "met" if not record.expectation_failures else "NOT met"
        print(f"expect     {_expect_text(s.expect)}: {verdict}", file=out)
        for failure in record.expectation_failures:
            print(f"           - {failure}", file=out)
    if metrics:
        print("metrics", file=out)
        width = max(len(n) for n in metrics)
        for name, value in metrics.items():
            # human units, with the exact stored value beside them where they round
            shown = format_metric(name, value)
            if shown.split(" ")[0].replace(",", "") != f"{value:g}" and not name.endswith(("_ratio", "_raw")):
                shown += f" ({value:.0f})" if value == int(value) else f" ({value:g})"
            print(f"  {name.ljust(width)}  {shown}", file=out)
    if series:
        print("time series", file=out)
        for name, points in series.items():
            values = [v for _, v in points]
            shown = metric_formatter(name.rsplit(".", 1)[-1])
            print(f"  {name}: {len(points)} points over {format_seconds(points[-1][0] - points[0][0])}, "
                  f"{shown(min(values))} .. {shown(max(values))}", file=out)
    for label, path in (("console", record.console_log), ("artifacts", record.artifacts_dir)):
        if path:
            print(f"{label.ljust(10)} {path}", file=out)


def cmd_export(args: argparse.Namespace) -> int:
    with open_store(args.results) as store:
        records = _selected(store, args)
    writer = export.write_csv if args.format == "csv" else export.write_json
    if args.output is None:
        writer(records, sys.stdout)
        return 0
    if not args.output.parent.is_dir():
        # a typo in the path is not a reason to create directories
        raise NotFoundError(f"-o {args.output}: the directory {args.output.parent} does not exist",
                            hint="create it first or write elsewhere")
    # write beside and rename, so a failed export never leaves half a file behind
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        with partial.open("w", newline="") as out:
            count = writer(records, out)
        partial.replace(args.output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {count} run(s) to {args.output}", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from ..results.record_file import read_records

    target = results_location(args.results)
    stores = [path for path in args.files if is_sqlite_file(path)]
    for path in stores:
        if target.path is not None and target.path.exists() and path.resolve() == target.path.resolve():
            raise UserError(f"results import {path}: that is the --results store itself",
                            hint="import another store, or pass --results for the target")
        existing(results_location(path))
    # every JSON file is read and checked before the first run is added
    batches = [(path, read_records(path)) for path in args.files if path not in stores]
    with ResultStore(target) as store:
        added = skipped = 0
        for path, records in batches:
            for record in records:
                # a run keeps its id (record_file.import_run_id), so a second import skips it
                if store.add_existing(record, matrix_source=record.scenario.source):
                    added += 1
                    print(f"imported {record.scenario_id} as {record.run_id}")
                else:
                    skipped += 1
                    print(f"skipped {record.scenario_id}: {record.run_id} is already in {store.location}")
        if batches:
            print(f"{added} run(s) imported into {store.location}, {skipped} skipped (already there)")
        for path in stores:
            # runs keep their run ids: a run already in the target is skipped, so a second import adds nothing
            with open_store(path) as source:
                added, skipped = store.merge_from(source)
            print(f"{path}: {added} run(s) added, {skipped} skipped (already in {store.location})")
    return 0


SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite_file(path: Path) -> bool:
    """A SQLite store to merge (by its header, whatever the file is called), not a JSON file."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        # a missing .sqlite is reported as a missing store, anything else by the JSON reader
        return Path(path).suffix in (".sqlite", ".sqlite3", ".db")


def cmd_compare(args: argparse.Namespace) -> int:
    with open_store(args.results) as store:
        records = _selected(store, args)
    comparison = compare_mod.compare(records, by=args.by, baseline=args.baseline, metrics=args.metrics)
    if args.format == "email":
        from ..report import data
        from ..report.email import format_email
        with open_store(args.results) as store:
            kernels = store.kernels()
            location = store.location
        print(format_email(comparison, lab_version=data.lab_version(),
                           commands=_reproduce(records, kernels, location, args)), end="")
        return 0
    print(compare_mod.format_table(comparison))
    return 0


def _reproduce(records: list[RunRecord], kernels: dict, results_path: ResultsLocation,
               args: argparse.Namespace) -> list[str]:
    """The commands that make these numbers again: kernels, matrix runs, this comparison."""
    import shlex
    commands = []
    for name in dict.fromkeys(r.scenario.kernel for r in records):
        kind = ((kernels.get(name) or {}).get("metadata") or {}).get("kind")
        commands.append("mshare-lab kernel fetch debian" if kind == "distribution"
                        else f"mshare-lab kernel show {shlex.quote(name)}   # its build inputs")
    results = shlex.quote(str(results_path))
    for source in dict.fromkeys(r.scenario.source.rsplit(":", 1)[0] for r in records if r.scenario.source):
        commands.append(f"mshare-lab run {shlex.quote(source)} --results {results}")
    compare = ["mshare-lab", "compare", "--by", args.by]
    if args.baseline:
        compare += ["--baseline", args.baseline]
    for metric in args.metrics or ():
        compare += ["--metric", metric]
    for flag in ("kernel", "mechanism", "outcome", "scenario"):
        if getattr(args, flag):
            compare += [f"--{flag}", getattr(args, flag)]
    compare += ["--results", str(results_path), "--format", "email"]
    commands.append(shlex.join(compare))
    return commands


def _expect_text(expect: dict) -> str:
    return ", ".join(f"{k}={'|'.join(v) if isinstance(v, list) else v}" for k, v in expect.items())


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)
