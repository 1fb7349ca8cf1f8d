"""Patch series as inputs: expand what the user named, then apply it to the private tree.

A ``--patch`` names a single diff, a directory of them (applied in name order, as
quilt/git format-patch number them) or an mbox as ``git format-patch --stdout`` or b4
writes (split into its messages with ``git mailsplit``). Every unit is applied with GNU
patch -p1, after a dry run so a failure is reported before anything changes, naming the
patch and the file/hunk that failed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import NotFoundError, PatchError, ToolError
from .progress import Progress

_PATCH_SUFFIXES = (".patch", ".diff", ".mbox", ".mbx", ".eml")
_MBOX_FROM = re.compile(rb"^From \S+", re.MULTILINE)


@dataclass(frozen=True)
class PatchUnit:
    """One diff to apply, as the user will recognise it in an error."""

    label: str        # "series.mbx [3/7] mm: add msharefs" or a file path
    data: bytes

    @property
    def subject(self) -> str:
        """The commit subject ("mm: add msharefs"), unfolded and without "[PATCH n/m]";
        a plain diff without mail headers has none ("")."""
        header = self.data.split(b"\n\n", 1)[0] if self.data.startswith(b"From ") else b""
        return _SUBJECT_TAG.sub("", _subject(header.replace(b"\n ", b" ").replace(b"\n\t", b" ")))


@dataclass(frozen=True)
class PatchInput:
    """One --patch argument, with the sha256 of every file it read (for metadata/cache)."""

    path: Path
    files: tuple[tuple[str, str], ...]     # (path, sha256) in application order
    units: tuple[PatchUnit, ...]

    def describe(self) -> dict:
        return {"path": str(self.path), "files": [{"path": p, "sha256": s} for p, s in self.files],
                "units": len(self.units), "subjects": [u.subject for u in self.units]}


def expand(path: Path) -> PatchInput:
    path = path.expanduser().resolve()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_PATCH_SUFFIXES))
        if not files:
            raise NotFoundError(f"patch directory {path} holds no *.patch/*.diff/*.mbox files")
    elif path.is_file():
        files = [path]
    else:
        raise NotFoundError(f"patch {path} does not exist", hint="pass a patch file, a directory or an mbox")
    units: list[PatchUnit] = []
    hashes: list[tuple[str, str]] = []
    for file in files:
        data = file.read_bytes()
        hashes.append((str(file), hashlib.sha256(data).hexdigest()))
        units.extend(_units_of(file, data))
    return PatchInput(path, tuple(hashes), tuple(units))


def _units_of(file: Path, data: bytes) -> list[PatchUnit]:
    """An mbox with several messages becomes one unit per message; anything else is one."""
    if len(_MBOX_FROM.findall(data)) <= 1 or not data.startswith(b"From "):
        return [PatchUnit(str(file), data)]
    with tempfile.TemporaryDirectory(prefix="mshare-lab-mbox-") as tmp:
        done = subprocess.run(["git", "mailsplit", "-b", f"-o{tmp}", str(file)], capture_output=True, text=True)
        if done.returncode != 0:
            raise PatchError(f"{file} looks like an mbox but git mailsplit failed: {done.stderr.strip()}")
        parts = sorted(Path(tmp).iterdir())
        units = []
        for index, part in enumerate(parts, start=1):
            body = part.read_bytes()
            if b"\n--- " not in body and not body.startswith(b"--- "):
                continue      # a cover letter (b4 keeps [PATCH 0/N]) carries no diff
            units.append(PatchUnit(f"{file} [{index}/{len(parts)}] {_subject(body)}", body))
        return units


def _subject(message: bytes) -> str:
    match = re.search(rb"^Subject:\s*(.*)$", message, re.MULTILINE)
    return match.group(1).decode(errors="replace").strip() if match else ""


_SUBJECT_TAG = re.compile(r"^\[[^\]]*\]\s*")
_TOUCHED_RE = re.compile(r"^(?:---|\+\+\+) (?:[ab]/)?(\S+)", re.MULTILINE)


def touched_files(unit: PatchUnit) -> set[str]:
    """Paths (relative, -p1) a diff reads or writes."""
    return {p for p in _TOUCHED_RE.findall(unit.data.decode(errors="replace")) if p != "/dev/null"}


def break_links(tree: Path, relpaths: set[str]) -> None:
    """Give each touched file its own inode so patching never writes into the source cache."""
    for rel in relpaths:
        target = tree / rel
        try:
            if target.is_file() and not target.is_symlink() and target.stat().st_nlink > 1:
                tmp = target.with_name(f".{target.name}.unlink-{os.getpid()}")
                shutil.copy2(target, tmp)
                os.replace(tmp, target)
        except OSError:
            continue


def apply_all(inputs: list[PatchInput], tree: Path, progress: Progress) -> None:
    units = [u for i in inputs for u in i.units]
    for number, unit in enumerate(units, start=1):
        progress(f"kernel: patch {number}/{len(units)}: {unit.label}")
        apply_one(unit, tree)


def apply_one(unit: PatchUnit, tree: Path) -> None:
    break_links(tree, touched_files(unit))
    base = ["patch", "-p1", "--batch", "--forward", "--no-backup-if-mismatch", "-r", "-", "-d", str(tree)]
    dry = _patch(base + ["--dry-run"], unit.data)
    if dry.returncode != 0:
        raise PatchError(f"patch {unit.label} does not apply: {failure_summary(dry.stdout + dry.stderr)}",
                         hint="rebase it onto this source or pick the kernel it was written for")
    done = _patch(base, unit.data)
    if done.returncode != 0:
        raise ToolError(f"patch {unit.label} passed the dry run but failed: {done.stdout.strip()[-300:]}")


def _patch(argv: list[str], data: bytes) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=data.decode(errors="surrogateescape"), capture_output=True, text=True,
                              errors="surrogateescape")
    except FileNotFoundError as exc:
        raise ToolError("GNU patch is not installed", hint="run scripts/setup") from exc


_HUNK_FAILED = re.compile(r"Hunk #(\d+) FAILED at (\d+)")
_CHECKING = re.compile(r"^(?:checking|patching) file '?([^'\n]+)'?$")


def failure_summary(output: str) -> str:
    """'mm/shmem.c: hunk #2 FAILED at 1234; include/x.h: file not found' from patch's output."""
    problems: list[str] = []
    current: str | None = None
    missing_hint: str | None = None
    for line in output.splitlines():
        if match := _CHECKING.match(line.strip()):
            current = match.group(1)
        elif match := _HUNK_FAILED.search(line):
            problems.append(f"{current}: hunk #{match.group(1)} FAILED at line {match.group(2)}")
        elif "Reversed (or previously applied) patch detected" in line:
            problems.append(f"{current}: already applied (reversed patch detected)")
        elif line.startswith("|--- ") or line.startswith("|+++ "):
            missing_hint = line[5:].split()[0] if len(line) > 5 else missing_hint
        elif "can't find file to patch" in line:
            missing_hint = missing_hint or "?"
        elif "No file to patch" in line:
            problems.append(f"{_strip(missing_hint)}: file not found in the source")
            missing_hint = None
        elif "malformed patch" in line or "Only garbage" in line:
            problems.append(line.strip())
    return "; ".join(problems) or (output.strip().splitlines() or ["patch failed"])[-1]


def _strip(path: str | None) -> str:
    if not path:
        return "?"
    return path[2:] if path[:2] in ("a/", "b/") else path
