"""Which Debian mirror to debootstrap from: the one this host's apt already uses.

Reads /etc/apt/sources.list (one-line format) and /etc/apt/sources.list.d/*.list|*.sources
(deb822), so a lab behind a local mirror or a snapshot works without configuration.
MSHARE_LAB_DEBIAN_MIRROR overrides.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

APT_DIR = Path("/etc/apt")


def debian_mirror(suite: str, apt_dir: Path = APT_DIR) -> str:
    """The URI of the first enabled `deb` source that carries suite (not -security/-updates)."""
    override = os.environ.get("MSHARE_LAB_DEBIAN_MIRROR")
    if override:
        return override
    for uri, suites in _sources(apt_dir):
        if suite in suites:
            return uri
    raise ConfigError(f"no apt source for Debian {suite} in {apt_dir}/sources.list*",
                      hint="add one, or set MSHARE_LAB_DEBIAN_MIRROR=http://deb.debian.org/debian")


def _sources(apt_dir: Path) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for file in one_line:
        if file.is_file():
            found += _parse_one_line(file.read_text())
    for file in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found += _parse_deb822(file.read_text())
    return found


def _parse_one_line(text: str) -> list[tuple[str, list[str]]]:
    """``deb [opts] URI SUITE COMPONENTS...``"""
    found = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        if words and words[0].startswith("["):
            # options may contain spaces: skip to the word closing them
            while words and not words[0].endswith("]"):
                words = words[1:]
            words = words[1:]
        if len(words) >= 2:
            found.append((words[0], [words[1]]))
    return found


def _parse_deb822(text: str) -> list[tuple[str, list[str]]]:
    """Stanzas of ``Types: deb`` / ``URIs:`` / ``Suites:`` (``Enabled: no`` skipped)."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        suites = fields.get("suites", "").split()
        for uri in fields.get("uris", "").split():
            found.append((uri, suites))
    return found


def suite_sources(suite: str, apt_dir: Path = APT_DIR) -> list[str]:
    """``deb URI SUITE main`` lines for suite and its -updates/-security companions as this
    host's apt has them, so the guest gets the same (security-updated) kernel as the host's
    ``apt-get download`` does."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    lines = [f"deb {debian_mirror(suite, apt_dir)} {suite} main"]
    for uri, suites in _sources(apt_dir):
        for name in suites:
            line = f"deb {uri} {name} main"
            if name in wanted and line not in lines:
                lines.append(line)
    return lines
