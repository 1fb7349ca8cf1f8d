"""CLI of the lab area: ``run`` a matrix in guests, ``doctor`` the hosts, ``gc`` leftovers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers) -> None:
    run = subparsers.add_parser("run", help="run every scenario of a matrix file in guests",
                                description="Run a scenario matrix in libvirt guests, store each run "
                                            "and check its expectations (exit 1 when one is not met).")
    run.add_argument("matrix", type=Path, metavar="MATRIX.yaml")
    run.add_argument("--parallel", type=_positive, default=1, metavar="N",
                     help="scenarios at a time per host, within its RAM (default: 1; a host's "
                          "'parallel' in the lab file wins)")
    add_lab_argument(run)
    run.add_argument("--results", type=Path, default=None, metavar="FILE",
                     help="results database (default: <lab home>/results.sqlite)")
    run.add_argument("--uri", default=None, help="libvirt URI (default: qemu:///system as root, "
                                                  "else qemu:///session)")
    run.add_argument("--yes", action="store_true",
                     help="run a matrix that expands to more scenarios than the safety limit")
    run.add_argument("--junit-xml", type=Path, default=None, metavar="FILE",
                     help="also write JUnit XML for CI: one testcase per scenario, unmet expectations as failures")
    run.set_defaults(func=cmd_run)

    doctor = subparsers.add_parser("doctor", help="check this host can run lab guests")
    doctor.add_argument("--uri", default=None, help="libvirt URI to check")
    doctor.add_argument("--no-probe", dest="probe", action="store_false",
                        help="skip the KVM probe boot (use the cached verdict only if any)")
    doctor.add_argument("--reprobe", action="store_true", help="probe KVM again even if a verdict is cached")
    doctor.set_defaults(func=cmd_doctor)

    gc = subparsers.add_parser("gc", help="remove guests, files and scratch dirs that dead runs left")
    gc.add_argument("--all", dest="everything", action="store_true",
                    help="remove every lab guest, also those of runs still going")
    gc.add_argument("--uri", default=None, help="libvirt URI to sweep")
    gc.set_defaults(func=cmd_gc)


def add_lab_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lab", type=Path, default=None, metavar="FILE",
                        help="lab file naming the libvirt hosts to use (docs/lab.md; default: this "
                             "machine's libvirt, or --uri)")


def load_lab(args: argparse.Namespace):
    """The lab file's hosts, or the one local host (``--uri``) without one."""
    from ..fleet import lab_file
    if getattr(args, "lab", None) is not None:
        if getattr(args, "uri", None):
            from ..errors import UserError
            raise UserError("--lab and --uri name hosts twice", hint="put the URI in the lab file")
        return lab_file.load(args.lab)
    return lab_file.default_lab(getattr(args, "uri", None))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least 1")
    return value


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from ..guest.signals import terminate_as_interrupt
    from ..lab.matrix import load
    from ..lab.runner import run_matrix
    from ..paths import default_results_db
    from ..lab.summary import summary_table, totals
    from ..results.store import ResultStore

    from ..lab.matrix import MAX_SCENARIOS

    matrix = load(args.matrix, max_scenarios=None if args.yes else MAX_SCENARIOS)
    lab = load_lab(args)
    where = (f"on {len(lab.hosts)} hosts ({', '.join(h.name for h in lab.hosts)}), "
             if len(lab.hosts) > 1 else "")
    _say(f"{args.matrix}: {len(matrix.scenarios)} scenario(s), {where}{args.parallel} at a time"
         + (" per host" if where else ""))
    results = args.results or default_results_db()
    fresh = not results.exists()
    with terminate_as_interrupt(), ResultStore(results) as store:
        try:
            records = run_matrix(matrix, store=store, parallel=args.parallel, progress=_say, lab=lab)
        except BaseException:
            # refused before anything ran (pre-boot checks, Ctrl-C): leave no empty results file
            if fresh and store.count() == 0:
                store.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(results) + suffix).unlink(missing_ok=True)
            raise
        print(summary_table(records))
        print(totals(records))
        print(f"results: {store.path}")
    if args.junit_xml is not None:
        from ..report import junit
        junit.write(records, args.junit_xml, suite=args.matrix.stem)
        print(f"junit: {args.junit_xml}")
    return 1 if any(r.expectation_failures for r in records) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from ..guest.doctor import run_checks
    from ..guest.libvirt_driver import default_uri
    from ..guest.signals import terminate_as_interrupt

    with terminate_as_interrupt():   # the KVM probe boots a guest: tear it down on kill too
        checks = run_checks(args.uri or default_uri(), probe=args.probe, reprobe=args.reprobe,
                            report=lambda c: print(c.line(), flush=True))
    failed = [c for c in checks if c.required and not c.ok]
    warned = [c for c in checks if not c.required and not c.ok]
    if failed:
        print(f"{len(failed)} required check(s) failed: {', '.join(c.name for c in failed)}")
    else:
        print(f"ready: every required check passed ({len(warned)} warning(s))")
    return 1 if failed else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from ..guest.gc import gc
    from ..workload.host_state import sweep_dead

    # local runs killed with SIGKILL: their region, segments, cgroup, sysctls and tmp dirs
    for what in sweep_dead():
        print(f"removed {what}")
    report = gc(args.uri, everything=args.everything)
    for name in report.domains:
        print(f"removed domain {name}")
    for path in report.files:
        print(f"removed file {path}")
    for path in report.scratch_dirs:
        print(f"removed scratch dir {path}")
    print(report.summary())
    return 0
