"""CLI commands of the image area: ``image build micro|debian [--force]``, ``image list``,
``image prune [--keep N]``."""

from __future__ import annotations

import sys
import time

from ..units import format_size


def register(subparsers) -> None:
    image = subparsers.add_parser("image", help="build and list guest root filesystems")
    sub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build (or find cached) a guest image")
    build.add_argument("kind", choices=("micro", "debian"),
                       help="micro: busybox initramfs running mshare-sga; debian: full guest over SSH")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    build.set_defaults(func=_build)

    listing = sub.add_parser("list", help="list built images")
    listing.set_defaults(func=_list)

    prune = sub.add_parser("prune", help="delete all but the newest images of each kind")
    prune.add_argument("--keep", type=int, default=1, metavar="N",
                       help="images of each kind to keep (default: 1)")
    prune.set_defaults(func=_prune)


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _build(args) -> int:
    started = time.monotonic()
    if args.kind == "micro":
        from ..image import micro
        path = micro.build(_progress, force=args.force)
        print(path)
    else:
        from ..image import debian
        image = debian.build(_progress, force=args.force)
        print(f"{image.name}\n  disk    {image.path} ({image.format})\n  kernel  {image.kernel}\n"
              f"  initrd  {image.initrd}\n  cmdline {image.cmdline}\n"
              f"  ssh     {image.ssh_user} with {image.ssh_private_key}\n"
              f"  hostkey {image.host_public_key}")
    _progress(f"done in {time.monotonic() - started:.1f} s")
    return 0


def _list(args) -> int:
    from ..image import cache
    entries = cache.list_all()
    if not entries:
        print("no images built (mshare-lab image build micro|debian)")
        return 0
    print(f"{'NAME':<26} {'SIZE':>10} {'CREATED':<20} {'HASH':<16} PATH")
    for e in entries:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.created))
        print(f"{e.name:<26} {format_size(e.size):>10} {created:<20} {e.hash[:16]} {e.path}")
    return 0


def _prune(args) -> int:
    from ..errors import ConfigError
    from ..image import cache
    if args.keep < 1:
        raise ConfigError("--keep must be at least 1", hint="the newest image of each kind stays")
    removed = cache.prune(args.keep)
    for entry in removed:
        print(f"removed {entry.name}")
    print(f"{len(removed)} image(s) removed")
    return 0
