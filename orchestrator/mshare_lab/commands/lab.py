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
    run.add_argument("--results", type=_results_location, default=None, metavar="FILE|URL",
                     help="results store: a SQLite file or a postgresql:// URL shared by the lab "
                          "(default: <lab home>/results.sqlite)")
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
    add_lab_argument(doctor)
    doctor.set_defaults(func=cmd_doctor)

    gc = subparsers.add_parser("gc", help="remove guests, files and scratch dirs that dead runs left")
    gc.add_argument("--all", dest="everything", action="store_true",
                    help="remove every lab guest, also those of runs still going")
    gc.add_argument("--uri", default=None, help="libvirt URI to sweep")
    gc.add_argument("--cache", action="store_true",
                    help="with --all: also delete the artifact cache in every host's pool")
    add_lab_argument(gc)
    gc.set_defaults(func=cmd_gc)

    _register_lab_group(subparsers)


def _register_lab_group(subparsers) -> None:
    lab = subparsers.add_parser("lab", help="the lab's hosts: prepare them",
                                description="Commands about the lab's libvirt hosts (docs/lab.md).")
    commands = lab.add_subparsers(dest="lab_command", metavar="COMMAND", required=True)
    prepare = commands.add_parser("prepare", help="make every host of the lab ready (Ansible), then check it",
                                  description="Run the lab_host Ansible play on every host of the lab "
                                              "(packages, libvirt daemons, /dev/kvm, huge pages, the pool "
                                              "directory), then the doctor checks of that host.")
    add_lab_argument(prepare)
    prepare.add_argument("--uri", default=None, help="libvirt URI of the one host (without --lab)")
    prepare.add_argument("--hugepages", type=_non_negative, default=None, metavar="N",
                         help="set vm.nr_hugepages to N on every host (default: leave it)")
    prepare.set_defaults(func=cmd_lab_prepare)


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


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"'{text}' must be at least {minimum}")
    return value


def _positive(text: str) -> int:
    return _whole(text, 1)


def _non_negative(text: str) -> int:
    return _whole(text, 0)


def _results_location(text: str):
    from ..results.location import results_location
    return results_location(text)



def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from ..guest.signals import terminate_as_interrupt
    from ..lab.matrix import load
    from ..lab.runner import run_matrix
    from ..results.location import results_location
    from ..lab.summary import summary_table, totals
    from ..results.store import ResultStore

    from ..lab.matrix import MAX_SCENARIOS

    matrix = load(args.matrix, max_scenarios=None if args.yes else MAX_SCENARIOS)
    lab = load_lab(args)
    where = (f"on {len(lab.hosts)} hosts ({', '.join(h.name for h in lab.hosts)}), "
             if len(lab.hosts) > 1 else "")
    _say(f"{args.matrix}: {len(matrix.scenarios)} scenario(s), {where}{args.parallel} at a time"
         + (" per host" if where else ""))
    results = results_location(args.results)
    fresh = results.path is not None and not results.exists()
    with terminate_as_interrupt(), ResultStore(results) as store:
        try:
            records = run_matrix(matrix, store=store, parallel=args.parallel, progress=_say, lab=lab)
        except BaseException:
            # refused before anything ran (pre-boot checks, Ctrl-C): leave no empty results file
            if fresh and store.count() == 0:
                store.close()
                for suffix in ("", "-wal", "-shm"):
                    Path(str(results.path) + suffix).unlink(missing_ok=True)
            raise
        print(summary_table(records))
        print(totals(records))
        print(f"results: {results}")
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
        if args.lab is not None:
            from ..fleet.doctor import lab_checks
            checks = lab_checks(load_lab(args), reprobe=args.reprobe, report=lambda c: print(c.line(), flush=True),
                                header=lambda line: print(line, flush=True))
        else:
            checks = run_checks(args.uri or default_uri(), probe=args.probe, reprobe=args.reprobe,
                                report=lambda c: print(c.line(), flush=True))
    return _doctor_verdict(checks)


def _doctor_verdict(checks) -> int:
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

    if args.cache and not args.everything:
        from ..errors import UserError
        raise UserError("--cache deletes the hosts' artifact caches only with --all",
                        hint="mshare-lab gc --lab FILE --all --cache")
    # local runs killed with SIGKILL: their region, segments, cgroup, sysctls and tmp dirs
    for what in sweep_dead():
        print(f"removed {what}")
    if args.lab is not None:
        return _gc_lab(load_lab(args), everything=args.everything, cache=args.cache)
    _print_gc(gc(args.uri, everything=args.everything))
    return 0


def _print_gc(report, indent: str = "") -> None:
    for name in report.domains:
        print(f"{indent}removed domain {name}")
    for path in report.files:
        print(f"{indent}removed file {path}")
    for path in report.scratch_dirs:
        print(f"{indent}removed scratch dir {path}")
    for name in report.volumes:
        print(f"{indent}removed volume {name}")
    print(f"{indent}{report.summary()}" + (f"; removed {len(report.volumes)} volume(s)" if report.volumes else ""))


def _gc_lab(lab, *, everything: bool, cache: bool) -> int:
    """Sweep every host; an unreachable one is reported and skipped, the others swept (exit 1)."""
    from ..errors import LabError
    from ..fleet.host import Host
    from ..guest.gc import gc_host
    from ..guest.libvirt_driver import new_run_id

    run_id = new_run_id()
    skipped = []
    for spec in lab.hosts:
        host = Host(spec, run_id=run_id)
        print(f"host {spec.name} ({host.driver.display_uri}):", flush=True)
        try:
            _print_gc(gc_host(host, everything=everything, cache=cache), indent="  ")
        except LabError as exc:
            # (the driver's hint is about this machine's daemons: not what helps for a remote host)
            hint = ("is it up and does its sshd answer?" if host.remote else
                    "start the daemons: `virtlogd -d; libvirtd -d` (scripts/setup does it)")
            print(f"  unreachable, skipped: {exc.message} -> {hint}", flush=True)
            skipped.append(spec.name)
        finally:
            host.close()
    if skipped:
        print(f"{len(skipped)} host(s) not swept: {', '.join(skipped)}; run `mshare-lab gc --lab {lab.path}` "
              "again once they answer")
        return 1
    return 0


def cmd_lab_prepare(args: argparse.Namespace) -> int:
    """The lab_host play on every host, then its doctor checks; a host whose play fails is
    reported and the next host prepared (exit 1)."""
    from ..errors import LabError
    from ..fleet.doctor import host_checks
    from ..fleet.host import Host
    from ..fleet.prepare import prepare_host
    from ..guest.libvirt_driver import new_run_id
    from ..guest.signals import terminate_as_interrupt

    lab = load_lab(args)
    run_id = new_run_id()
    checks, failed_hosts = [], []
    with terminate_as_interrupt():
        for spec in lab.hosts:
            host = Host(spec, run_id=run_id)
            print(f"host {spec.name} ({host.driver.display_uri}): preparing", flush=True)
            try:
                result = prepare_host(host, hugepages=args.hugepages, progress=_say)
                print(result.summary(), flush=True)
                for task in result.changed:
                    print(f"  changed: {task}")
                if result.pool:
                    print(f"  pool {result.pool} at {spec.pool}")
                checks += host_checks(host, lab_path=lab.path, report=lambda c: print(c.line(), flush=True))
            except LabError as exc:
                print(f"FAIL {spec.name} prepare: {exc}", flush=True)
                failed_hosts.append(spec.name)
            finally:
                host.close()
    if failed_hosts:
        print(f"{len(failed_hosts)} host(s) not prepared: {', '.join(failed_hosts)}")
    return max(_doctor_verdict(checks), 1 if failed_hosts else 0)
