"""Reading what a guest wrote to its serial ports.

libvirt hands file-backed serial ports to virtlogd, which rotates a file once it passes
its ``max_size`` (2 MiB by default): ``console.log`` becomes ``console.log.0``, the
previous ``.0`` becomes ``.1`` and so on. A chatty guest (thousands of OOM-killer reports)
crosses that, so every reader here stitches the backups back together, oldest first.
"""

from __future__ import annotations

from pathlib import Path


def rotated_parts(path: Path) -> list[Path]:
    """The file and its virtlogd backups, oldest first."""
    backups = []
    index = 0
    while (candidate := path.with_name(f"{path.name}.{index}")).exists():
        backups.append(candidate)
        index += 1
    return list(reversed(backups)) + ([path] if path.exists() else [])


def read_text(path: Path) -> str:
    """The whole output of a serial port (all rotated parts), '' when nothing was written."""
    chunks = []
    for part in rotated_parts(path):
        try:
            chunks.append(part.read_bytes())
        except OSError:
            continue
    # serial output can carry any byte (a dying guest, a panic mid-line)
    return b"".join(chunks).decode("utf-8", errors="replace").replace("\r", "")


def read_lines(path: Path) -> list[str]:
    return read_text(path).splitlines()


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(read_lines(path)[-lines:])


def remove_all(path: Path) -> None:
    for part in rotated_parts(path):
        part.unlink(missing_ok=True)


class LineFollower:
    """Hands out the complete lines a growing serial file gained since the last call.

    Follows the current file by byte offset; when virtlogd rotates it (the file shrinks
    or is replaced), the rest of the old file is read from its ``.0`` backup first.
    """

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def new_lines(self) -> list[str]:
        data = b""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        if self._inode is not None and stat.st_ino != self._inode:
            # rotated: finish the old file, now named .0
            data += _read_from(self.path.with_name(self.path.name + ".0"), self._offset)
            self._offset = 0
        self._inode = stat.st_ino
        chunk = _read_from(self.path, self._offset)
        self._offset += len(chunk)
        data = self._partial + data + chunk
        *complete, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in complete]


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()
    except OSError:
        return b""
