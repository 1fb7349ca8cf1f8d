"""Framed, checksummed records on a serial line.

A guest writes what it measured to a serial port the host captures into a file. Serial
output can be cut by a panic, interleaved with kernel messages or truncated by a hang, so
every record is framed and checksummed; the host keeps only records whose checksum holds.

Wire format (one record)::

    MSHARE-LAB-BEGIN <name> <payload-bytes> <sha256-hex>
    <payload, base64, wrapped at any width>
    MSHARE-LAB-END <name>

The guest side is busybox shell (``base64`` and ``sha256sum`` applets); see
images/micro/init. Progress lines, which must be readable live and need no integrity,
are single lines ``MSHARE-LAB-PROGRESS <json>`` on the console.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

BEGIN = "MSHARE-LAB-BEGIN"
END = "MSHARE-LAB-END"
PROGRESS = "MSHARE-LAB-PROGRESS"

_BEGIN_RE = re.compile(rf"{BEGIN} (\S+) (\d+) ([0-9a-f]{{64}})")
_END_RE = re.compile(rf"{END} (\S+)")


@dataclass(frozen=True)
class Frame:
    name: str
    payload: bytes

    def json(self):
        return json.loads(self.payload.decode())

    def text(self) -> str:
        return self.payload.decode(errors="replace")


@dataclass(frozen=True)
class BrokenFrame:
    """A record that began but did not end, or whose checksum failed."""

    name: str
    reason: str


def encode(name: str, payload: bytes, width: int = 76) -> str:
    """The host-side encoder (tests and the local path use it; the guest uses shell)."""
    if not re.fullmatch(r"\S+", name):
        raise ValueError(f"frame name {name!r} must not contain spaces")
    digest = hashlib.sha256(payload).hexdigest()
    body = base64.b64encode(payload).decode()
    lines = [body[i:i + width] for i in range(0, len(body), width)] or [""]
    return "\n".join([f"{BEGIN} {name} {len(payload)} {digest}", *lines, f"{END} {name}"]) + "\n"


def decode(lines: Iterable[str]) -> Iterator[Frame | BrokenFrame]:
    """Yield every frame found in a stream of text lines, good or broken."""
    current: tuple[str, int, str] | None = None
    body: list[str] = []
    for raw in lines:
        line = raw.strip().replace("\r", "")
        begin = _BEGIN_RE.search(line)
        if begin:
            if current:
                yield BrokenFrame(current[0], "no end marker before the next frame")
            current = (begin.group(1), int(begin.group(2)), begin.group(3))
            body = []
            continue
        if current is None:
            continue
        end = _END_RE.search(line)
        if end:
            yield _finish(current, body, end.group(1))
            current = None
            continue
        body.append(line)
    if current:
        yield BrokenFrame(current[0], "stream ended inside the frame (guest died or hung?)")


def _finish(header: tuple[str, int, str], body: list[str], end_name: str) -> Frame | BrokenFrame:
    name, size, digest = header
    if end_name != name:
        return BrokenFrame(name, f"end marker names {end_name!r}")
    try:
        payload = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError) as exc:
        return BrokenFrame(name, f"payload is not base64: {exc}")
    if len(payload) != size or hashlib.sha256(payload).hexdigest() != digest:
        return BrokenFrame(name, f"checksum mismatch ({len(payload)} of {size} bytes)")
    return Frame(name, payload)


def frames_by_name(lines: Iterable[str]) -> dict[str, Frame]:
    """The last good frame of each name."""
    return {f.name: f for f in decode(lines) if isinstance(f, Frame)}


def progress_events(lines: Iterable[str]) -> Iterator[dict]:
    """Parse ``MSHARE-LAB-PROGRESS {json}`` lines; malformed ones are skipped."""
    for line in lines:
        idx = line.find(PROGRESS + " ")
        if idx < 0:
            continue
        try:
            yield json.loads(line[idx + len(PROGRESS) + 1:])
        except json.JSONDecodeError:
            continue
