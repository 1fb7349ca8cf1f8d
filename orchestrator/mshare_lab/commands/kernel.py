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

    show = sub.add_parser("show", help="a kernel: release, source, patches, mechanisms, build (--json: metadata)")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="the whole metadata.json instead of the summary")
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
    if args.json:
        print(json.dumps(artifact.metadata, indent=2, sort_keys=True))
    else:
        print(summary(artifact))
    return 0


def summary(artifact) -> str:
    """What a patch developer asks of a kernel first, one fact per line."""
    meta = artifact.metadata
    src = meta.get("source") or {}
    lines = [f"name        {artifact.name}",
             f"release     {artifact.release}  ({artifact.kind})"]
    where = src.get("location") or src.get("url") or src.get("path") or "?"
    digest = src.get("digest") or src.get("commit")
    lines.append(f"source      {src.get('kind', '?')} {where}" + (f" ({str(digest)[:12]})" if digest else ""))
    patch_inputs = meta.get("patches") or []
    if not patch_inputs:
        lines.append("patches     none")
    for index, item in enumerate(patch_inputs):
        subjects = item.get("subjects") or _subjects_from_files(item)
        head = "patches    " if index == 0 else "           "
        lines.append(f"{head} {item.get('path')} ({item.get('units', len(subjects))} patches)")
        for number, subject in enumerate(subjects, start=1):
            lines.append(f"              {number}. {subject or '(no subject: a plain diff)'}")
    fragments = [Path(f["path"]).name for f in meta.get("fragments") or []]
    if fragments:
        lines.append(f"fragments   {', '.join(fragments)}")
    lines.append("mechanisms")
    for name, params in sorted(artifact.mechanisms.items()):
        lines.append(f"  {name:<16}{_params(name, params)}")
    if meta.get("build_seconds") is not None:
        lines.append(f"build       {meta['build_seconds']:g} s with -j{meta.get('jobs', '?')}, "
                     f"{meta.get('compiler', '?')}")
    lines.append(f"created     {meta.get('created', '?')}")
    lines.append(f"path        {artifact.path}")
    return "\n".join(lines)


def _params(name: str, params: dict) -> str:
    if not params:
        return "stock (no parameters)"
    if name == "ptshare":
        return f"MAP_SHARED_PT = {params['map_flag']:#x}"
    if name == "mshare-syscall":
        return f"mshare = {params['nr_mshare']}, mshare_unlink = {params['nr_mshare_unlink']}"
    if name == "msharefs-ioctl":
        return f"ioctl ABI {params.get('abi')}"
    return ", ".join(f"{k} = {v}" for k, v in params.items())


def _subjects_from_files(item: dict) -> list[str]:
    """Artifacts built before subjects were recorded: read them from the patch files, if
    those are still there and unchanged (never guessed from a changed file)."""
    from ..errors import LabError
    from ..kernel import patches
    from ..kernel.source import file_sha256
    try:
        if any(file_sha256(Path(f["path"])) != f["sha256"] for f in item.get("files") or []):
            return []
        return [unit.subject for unit in patches.expand(Path(item["path"])).units]
    except (OSError, KeyError, ValueError, LabError):
        return []
