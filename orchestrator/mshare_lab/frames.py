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

Everything here comes from a guest running the kernel under test, so it is untrusted
input: a frame name is a short ``[A-Za-z0-9][A-Za-z0-9._-]*`` word (never a path, never
``..``), a payload is at most ``MAX_PAYLOAD`` bytes, a progress line at most
``MAX_PROGRESS_LINE`` characters, and JSON is parsed with a nesting limit.  Whatever
breaks these rules is a ``BrokenFrame`` kept as evidence, with its name shown escaped.
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
#: what a frame name may be: it becomes part of a file name in the run directory
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: the largest payload a guest may send (a dmesg of a noisy kernel is a few MiB)
MAX_PAYLOAD = 32 << 20
#: a progress line longer than this is not one the workload wrote
MAX_PROGRESS_LINE = 64 << 10
#: JSON nested deeper than this is refused before Python's recursion limit is reached
MAX_JSON_DEPTH = 64


_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET_RE = re.compile(r"[\[\]{}]")


class UntrustedJSONError(ValueError):
    """JSON from a guest that is too large or too deeply nested to be a lab document."""


def safe_name(name: str) -> str:
    """A name as it may be shown: escaped and cut (for names that failed ``NAME_RE``)."""
    return name.encode("unicode_escape", errors="replace").decode("ascii", errors="replace")[:80]


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and ".." not in name


def loads_bounded(text: str | bytes, max_bytes: int = MAX_PAYLOAD, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` for untrusted text: size and nesting limited (UntrustedJSONError)."""
    if len(text) > max_bytes:
        raise UntrustedJSONError(f"{len(text)} bytes of JSON, more than {max_bytes}")
    raw = text.decode() if isinstance(text, bytes) else text
    depth = 0
    # brackets inside strings do not nest: drop the strings, then count what is left
    for bracket in _BRACKET_RE.findall(_STRING_RE.sub("", raw)):
        depth += 1 if bracket in "[{" else -1
        if depth > max_depth:
            raise UntrustedJSONError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(raw)


@dataclass(frozen=True)
class Frame:
    name: str
    payload: bytes

    def json(self):
        """The payload as JSON (ValueError, incl. UntrustedJSONError, when it is not)."""
        return loads_bounded(self.payload)

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
            name, size = begin.group(1), int(begin.group(2))
            if not valid_name(name):
                yield BrokenFrame(safe_name(name), "frame name is not a plain word ([A-Za-z0-9._-], "
                                                   "no '..'): refused, never used as a file name")
                current = None
            elif size > MAX_PAYLOAD:
                yield BrokenFrame(name, f"announces {size} bytes, more than the {MAX_PAYLOAD} a frame may carry")
                current = None
            else:
                current = (name, size, begin.group(3))
                body, body_chars = [], 0
            continue
        if current is None:
            continue
        end = _END_RE.search(line)
        if end:
            yield _finish(current, body, end.group(1))
            current = None
            continue
        body_chars += len(line)
        if body_chars > current[1] * 4 // 3 + 4096:
            # more base64 than the announced size can need: stop buffering it
            yield BrokenFrame(current[0], f"payload longer than the {current[1]} bytes announced")
            current = None
            continue
        body.append(line)
    if current:
        yield BrokenFrame(current[0], "stream ended inside the frame (guest died or hung?)")


def _finish(header: tuple[str, int, str], body: list[str], end_name: str) -> Frame | BrokenFrame:
    name, size, digest = header
    if end_name != name:
        return BrokenFrame(name, f"end marker names {safe_name(end_name)!r}")
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
        if idx < 0 or len(line) > MAX_PROGRESS_LINE:
            continue
        try:
            event = loads_bounded(line[idx + len(PROGRESS) + 1:], MAX_PROGRESS_LINE)
        except ValueError:   # JSONDecodeError and UntrustedJSONError
            continue
        if isinstance(event, dict):
            yield event
