"""``mshare-lab kernel build|fetch|list|show``: kernels from source plus patches, or from Debian."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("kernel", help="build, fetch and list guest kernels")
    sub = parser.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build a kernel from source + patches + config fragments")
    build.add_argument("--source", required=True, metavar="SRC",
                       help="kernel source directory, source tarball, or git repository path/URL (with --ref)")
    build.add_argument("--ref", help="git ref (branch, tag, commit) when SRC is a git repository")
    build.add_argument("--patch", action="append", default=[], type=Path, metavar="P",
                       help="patch file, directory of patches (name order) or mbox (git am / b4); repeatable")
    build.add_argument("--series", metavar="MSGID|URL",
                       help="a series on lore/public-inbox: b4 takes the newest revision, in order, with trailers")
    build.add_argument("--series-mbox", type=Path, metavar="FILE",
                       help="the same from a thread saved as an mbox (offline); applied before any --patch")
    build.add_argument("--no-ccache", dest="ccache", action="store_false",
                       help="compile everything (the artifact is the same either way)")
    build.add_argument("--fragment", action="append", default=[], metavar="F",
                       help="Kconfig fragment file, or the name of one in images/kernel/ (e.g. mshare); repeatable")
    build.add_argument("--name", required=True, help="name to register the kernel under")
    build.add_argument("--force", action="store_true", help="rebuild even when the same inputs were built")
    build.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                       help="make -j N (default: number of CPUs)")
    build.set_defaults(func=_build)

    fetch = sub.add_parser("fetch", help="fetch a distribution kernel")
    fetch.add_argument("distribution", choices=["debian"], help="which distribution kernel")
    fetch.set_defaults(func=_fetch)

    listing = sub.add_parser("list", help="the registered kernels")
    listing.set_defaults(func=_list)

    show = sub.add_parser("show", help="a kernel's metadata")
    show.add_argument("name")
    show.set_defaults(func=_show)


def _build(args: argparse.Namespace) -> int:
    from ..kernel.build import BuildRequest, build_kernel
    from ..kernel.progress import stderr_progress

    request = BuildRequest(source=args.source, ref=args.ref, patches=tuple(args.patch),
                           fragments=tuple(args.fragment), name=args.name, force=args.force, jobs=args.jobs,
                           ccache=args.ccache, series=args.series, series_mbox=args.series_mbox)
    artifact = build_kernel(request, stderr_progress)
    print(f"{artifact.name}: {artifact.release} at {artifact.path}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ..kernel.fetch import fetch_debian
    from ..kernel.progress import stderr_progress

    artifact = fetch_debian(stderr_progress)
    print(f"{artifact.name}: {artifact.release} at {artifact.path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from ..kernel import store

    rows = [("NAME", "RELEASE", "KIND", "MECHANISMS", "CREATED")]
    for artifact in store.list_all():
        rows.append((artifact.name, artifact.release, artifact.kind, format_mechanisms(artifact.mechanisms),
                     artifact.metadata.get("created", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def format_mechanisms(mechanisms: dict) -> str:
    """shmem,sysv,mshare-syscall(451/452),ptshare(0x200000): compact but complete."""
    parts = []
    for name, params in mechanisms.items():
        if not params:
            parts.append(name)
        elif name == "mshare-syscall":
            parts.append(f"{name}({params['nr_mshare']}/{params['nr_mshare_unlink']})")
        elif name == "ptshare":
            parts.append(f"{name}({params['map_flag']:#x})")
        else:
            parts.append(f"{name}({','.join(str(v) for v in params.values())})")
    return ",".join(parts) or "-"


def _show(args: argparse.Namespace) -> int:
    from ..kernel import store

    artifact = store.get(args.name)
    print(f"name:  {artifact.name}")
    print(f"path:  {artifact.path}")
    print(json.dumps(artifact.metadata, indent=2, sort_keys=True))
    return 0
