"""Patch series as kernel engineers have them: a thread on lore (Message-ID or URL), or
the same thread saved as an mbox, turned into an applicable series by b4.

b4 does what the lab must not redo by hand: pick the newest revision in the thread,
drop the cover letter, put the patches in order, notice a patch that is missing, and
add the trailers (Reviewed-by, Tested-by...) that replies gave. Its ``am`` output (one
mbox, patches only) is kept content-addressed under the lab home, so the build names a
file whose sha256 is in the artifact's hash, and metadata says which thread it came from.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, NotFoundError, PatchError, ToolError
from ..paths import kernels_dir
from .progress import Progress

_MISSING = re.compile(r"ERROR: missing \[(\d+)/(\d+)\]")
_REVISION = re.compile(r"Will use the latest revision: (v\d+)|Selected revision: (v\d+)")
_TOTAL = re.compile(r"^Total patches: (\d+)", re.MULTILINE)


@dataclass(frozen=True)
class FetchedSeries:
    """A series b4 assembled, ready to be a --patch."""

    mbox: Path                 # patches only, in order, trailers applied
    origin: str                # the Message-ID/URL or the thread mbox it came from
    revision: str | None       # "v2" when b4 said which one it used
    patches: int


def b4_command() -> list[str]:
    """b4 from the lab's own environment (a PyPI dependency), else one on PATH."""
    beside = Path(sys.executable).with_name("b4")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("b4")
    if found:
        return [found]
    raise ToolError("b4 is not installed", hint="run scripts/setup (b4 is a Python dependency of mshare-lab)")


def series_dir() -> Path:
    path = kernels_dir() / "series"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(spec: str | None = None, *, mbox: Path | None = None, progress: Progress = lambda _l: None) -> FetchedSeries:
    """``spec`` (Message-ID or lore URL, fetched) or ``mbox`` (a thread on disk, offline)."""
    if (spec is None) == (mbox is None):
        raise ConfigError("--series and --series-mbox name the same thing: give one of them")
    argv = b4_command() + ["--no-interactive"]
    if mbox is not None:
        mbox = mbox.expanduser().resolve()
        if not mbox.is_file():
            raise NotFoundError(f"series thread mbox {mbox} does not exist")
        argv += ["--offline-mode", "am", "--use-local-mbox", str(mbox)]
        origin = str(mbox)
    else:
        argv += ["am", str(spec)]
        origin = str(spec)
    progress(f"kernel: b4 am {origin}")
    with tempfile.TemporaryDirectory(prefix="mshare-lab-b4-") as tmp:
        done = subprocess.run(argv + ["--outdir", tmp, "--mbox-name", "series", "--no-cache"],
                              capture_output=True, text=True, errors="replace", cwd=tmp)
        report = done.stdout + done.stderr
        if done.returncode != 0:
            last = " | ".join(report.strip().splitlines()[-3:])
            raise PatchError(f"b4 could not assemble a series from {origin}: {last}",
                             hint="check the Message-ID/URL, or save the thread and pass --series-mbox")
        missing = _MISSING.findall(report)
        if missing:
            names = ", ".join(f"{n}/{of}" for n, of in missing)
            raise PatchError(f"series from {origin} is incomplete: patch {names} missing from the thread",
                             hint="fetch the whole thread (b4 mbox) or pick a complete revision")
        produced = Path(tmp) / "series.mbx"
        if not produced.is_file() or produced.stat().st_size == 0:
            raise PatchError(f"b4 found no patches in {origin}: {report.strip().splitlines()[-1:] or ''}")
        data = produced.read_bytes()
        kept = series_dir() / f"{hashlib.sha256(data).hexdigest()[:16]}.mbx"
        if not kept.exists():
            shutil.copyfile(produced, kept)
    revision = next((a or b for a, b in _REVISION.findall(report)), None)
    total = _TOTAL.search(report)
    progress(f"kernel: b4 chose {revision or 'the only revision'}, {total.group(1) if total else '?'} patches")
    return FetchedSeries(kept, origin, revision, int(total.group(1)) if total else 0)
