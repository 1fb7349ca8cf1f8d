"""The micro guest: a busybox initramfs that runs mshare-sga once and reports over serial.

``build()`` makes the base initramfs (busybox + mshare-sga + images/micro/init), cached by
the hash of those inputs. ``scenario_initrd()`` appends a tiny cpio holding the scenario's
``/etc/mshare-lab/scenario.env``: the kernel unpacks concatenated archives in order and a
later file replaces an earlier one, so one cached base serves every scenario.
``read_guest_output()`` turns the captured ttyS1 file back into frames.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import frames, paths
from ..guest import console
from ..errors import ConfigError, NotFoundError
from . import cache
from .cpio import newc_gz

Progress = Callable[[str], None]

INIT_SCRIPT = paths.REPO_ROOT / "images/micro/init"
BUSYBOX = Path("/bin/busybox")
WORKLOAD_IN_IMAGE = "usr/bin/mshare-sga"
SCENARIO_ENV_IN_IMAGE = "etc/mshare-lab/scenario.env"
#: bump when the layout this module produces changes without its inputs changing
RECIPE_VERSION = b"micro-2"

#: The kernel command line for micro guests.
#: - console=ttyS0: progress lines and kernel messages on the first serial port
#: - rdinit=/init: run our init from the initramfs (there is no root disk)
#: - panic=-1 + oops=panic: an oops or panic reboots at once, and the domain's
#:   on_reboot=destroy ends the VM, so a broken patch becomes `guest-panic` instead of a hang
#: - softlockup/hung-task panics stay off, but the init turns them off through sysctl and
#:   only where the kernel has them (a kernel without hung-task detection would answer
#:   hung_task_panic=0 here with "Unknown kernel command line parameters")
#: - quiet loglevel=4: keep the console readable for live progress
MICRO_CMDLINE = "console=ttyS0 rdinit=/init panic=-1 oops=panic quiet loglevel=4"

#: frame names the init sends; `status` comes last and marks a complete stream
FRAME_NAMES = ("probe", "result", "meminfo", "vmstat", "dmesg", "status")

_ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")


def _say(progress: Progress | None, message: str) -> None:
    if progress:
        progress(message)


def _workload_binary() -> Path:
    """The static mshare-sga from the workload area (built and cached there)."""
    try:
        from ..workload.build import ensure_binary
    except ImportError as exc:
        raise NotFoundError("the workload builder mshare_lab.workload.build is not installed",
                            hint="the workload area (workloads/sga) must land first; build() also takes workload_binary=") from exc
    return ensure_binary()


def _busybox() -> Path:
    if not BUSYBOX.exists():
        raise NotFoundError(f"{BUSYBOX} is missing", hint="install busybox-static (scripts/setup)")
    return BUSYBOX


def input_hash(busybox: Path, workload: Path, init: Path) -> str:
    return cache.content_hash([RECIPE_VERSION, init.read_bytes(),
                               cache.file_digest(busybox), cache.file_digest(workload)])


def build(progress: Progress | None = None, *, force: bool = False,
          workload_binary: Path | None = None) -> Path:
    """The base micro initramfs (gzip newc cpio); rebuilt only when an input changed."""
    busybox = _busybox()
    workload = workload_binary or _workload_binary()
    digest = input_hash(busybox, workload, INIT_SCRIPT)
    hit = None if force else cache.lookup("micro", digest)
    if hit:
        _say(progress, f"micro image {hit.name}: cached")
        return hit.path
    _say(progress, f"micro image micro-{digest[:16]}: building")
    out = paths.images_dir() / f"micro-{digest[:16]}.cpio.gz"
    with tempfile.TemporaryDirectory(prefix=".micro-", dir=paths.images_dir()) as tmp:
        staging = Path(tmp) / "root"
        _stage(staging, busybox, workload)
        part = Path(tmp) / out.name
        part.write_bytes(newc_gz(staging))
        part.chmod(0o644)  # the qemu user of qemu:///system reads it
        part.replace(out)
    entry = cache.write_manifest("micro", digest, out, [out.name],
                                 inputs={"init": str(INIT_SCRIPT), "busybox": str(busybox),
                                         "workload": str(workload)})
    _say(progress, f"micro image {entry.name}: built ({entry.size // 1024} KiB)")
    return out


def _stage(staging: Path, busybox: Path, workload: Path) -> None:
    for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run",
                "root", "etc/mshare-lab", "sys/fs/cgroup"):
        (staging / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, staging / "bin/busybox")
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True,
                             check=True).stdout.split()
    for applet in applets:
        link = staging / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(staging / "bin/busybox", link.parent))
    shutil.copy2(workload, staging / WORKLOAD_IN_IMAGE)
    (staging / WORKLOAD_IN_IMAGE).chmod(0o755)
    shutil.copy2(INIT_SCRIPT, staging / "init")
    (staging / "init").chmod(0o755)
    (staging / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (staging / "etc/group").write_text("root:x:0:\n")


def render_env(env: dict[str, str]) -> str:
    """scenario.env text: one shell-quoted KEY=VALUE a line, sourced by the init."""
    lines = []
    for key, value in env.items():
        if not _ENV_KEY.fullmatch(key):
            raise ConfigError(f"scenario variable {key!r} is not a shell name",
                              hint="use upper-case letters, digits and _")
        lines.append(f"{key}={shlex.quote(str(value))}")
    return "\n".join(lines) + "\n"


def scenario_tail(env: dict[str, str]) -> bytes:
    """The gzip cpio with /etc/mshare-lab/scenario.env that follows the base image.

    The kernel unpacks concatenated archives in order, so base + tail is the scenario's
    initramfs; the host joins them (guest.host_files), and only the tail is per scenario."""
    text = render_env(env)
    with tempfile.TemporaryDirectory(prefix=".scenario-") as tmp:
        staging = Path(tmp) / "root"
        env_file = staging / SCENARIO_ENV_IN_IMAGE
        env_file.parent.mkdir(parents=True)
        env_file.write_text(text)
        return newc_gz(staging)


def scenario_initrd(base: Path, env: dict[str, str], out: Path) -> Path:
    """base + an appended cpio with /etc/mshare-lab/scenario.env; returns out."""
    from ..guest.host_files import write_joined
    return write_joined(base, scenario_tail(env), out)


@dataclass
class GuestOutput:
    """What a micro guest reported on ttyS1."""

    frames: dict[str, frames.Frame] = field(default_factory=dict)
    broken: list[frames.BrokenFrame] = field(default_factory=list)
    result: dict | None = None
    probe: dict | None = None
    status: dict | None = None
    dmesg: str | None = None
    meminfo: str | None = None
    vmstat: str | None = None
    errors: list[str] = field(default_factory=list)   # frames good on the wire but unreadable

    @property
    def complete(self) -> bool:
        """The guest got to the end of its report (status is sent last) and nothing broke."""
        return self.status is not None and not self.broken and not self.errors

    @property
    def workload_exit(self) -> int | None:
        return None if self.status is None else self.status.get("workload_exit")


def read_guest_output(serial_path: Path) -> GuestOutput:
    """Parse a captured ttyS1 file; a cut or corrupted stream gives broken frames, never raises
    (except for a missing file, which means the guest was never started)."""
    # virtlogd rotates a big serial file (serial.log.0, .1 ...): stitch the parts, oldest first
    parts = console.rotated_parts(Path(serial_path))
    if not parts:
        raise NotFoundError(f"no guest output at {serial_path}")
    out = GuestOutput()
    for item in frames.decode(console.read_text(Path(serial_path)).splitlines()):
        if isinstance(item, frames.Frame):
            out.frames[item.name] = item
        else:
            out.broken.append(item)
    for name in ("result", "probe", "status"):
        if name in out.frames:
            try:
                setattr(out, name, out.frames[name].json())
            except (ValueError, UnicodeDecodeError) as exc:
                out.errors.append(f"{name}: not JSON: {exc}")
    for name in ("dmesg", "meminfo", "vmstat"):
        if name in out.frames:
            setattr(out, name, out.frames[name].text())
    return out


def meminfo_kib(text: str) -> dict[str, int]:
    """/proc/meminfo text -> {"PageTables": kib, ...}."""
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return values


def env_for(workload_args: list[str], probe_args: list[str] | None = None, *,
            nr_hugepages: int | None = None, sysctls: dict[str, str] | None = None,
            scenario_id: str | None = None, workload_timeout: float | None = None) -> dict[str, str]:
    """The scenario.env mapping from argument lists (the runner's convenience).

    ``workload_timeout`` (seconds) ends the workload inside the guest; set it below the
    host's guest timeout so that a stuck workload still yields dmesg and a status frame.
    """
    env = {"WORKLOAD_ARGS": _words(workload_args), "PROBE_ARGS": _words(probe_args or [])}
    if workload_timeout is not None:
        env["WORKLOAD_TIMEOUT"] = str(max(1, int(workload_timeout)))
    if nr_hugepages is not None:
        env["NR_HUGEPAGES"] = str(nr_hugepages)
    if sysctls:
        env["SYSCTLS"] = " ".join(f"{k}={v}" for k, v in sysctls.items())
    if scenario_id:
        env["SCENARIO_ID"] = scenario_id
    return env


def _words(args: list[str]) -> str:
    """Arguments joined for the init's unquoted $WORKLOAD_ARGS, which splits on blanks only."""
    for arg in args:
        if not arg or re.search(r"[\s'\"\\$`]", arg):
            raise ConfigError(f"workload argument {arg!r} cannot pass through scenario.env",
                              hint="arguments must be single words without quotes or $")
    return " ".join(args)
