"""Byte sizes as people write them (256M, 1G, 300G) and as the lab prints them."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse '256M', '1G', '1.5G', '4096' (binary units) into bytes; ValueError otherwise."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        return text
    match = _SIZE_RE.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not a size; write a number with an optional K, M, G or T suffix (e.g. 256M)")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.upper()]
    if value != int(value):
        raise ValueError(f"'{text}' is not a whole number of bytes")
    return int(value)


def format_size(num_bytes: int | float, precision: int = 1) -> str:
    """1073741824 -> '1.0 GiB'; the inverse direction of parse_size, for humans."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.{precision}f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_size(num_bytes: int) -> str:
    """Compact form used in scenario ids: 1073741824 -> '1G', 268435456 -> '256M'."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if num_bytes >= factor and num_bytes % factor == 0:
            return f"{num_bytes // factor}{unit}"
    return str(num_bytes)
