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


# --- times, rates and counts, for the tables and the report ----------------------------------

def format_seconds(seconds: float) -> str:
    """27.4 -> '27.4 s', 0.0032 -> '3.2 ms', 252 -> '4 min 12 s': the unit a person reads."""
    value = float(seconds)
    magnitude = abs(value)
    if magnitude == 0:
        return "0 s"
    if magnitude < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if magnitude < 1:
        return f"{value * 1e3:.3g} ms"
    if magnitude < 60:
        return f"{value:.3g} s" if magnitude < 10 else f"{value:.1f} s"
    if magnitude < 3600:
        minutes, rest = divmod(round(magnitude), 60)
        return f"{'-' if value < 0 else ''}{minutes} min {rest} s"
    hours, rest = divmod(round(magnitude / 60), 60)
    return f"{'-' if value < 0 else ''}{hours} h {rest:02d} min"


def format_microseconds(us: float) -> str:
    """A duration the workload reports in µs (protect_change_us, latency_us.*)."""
    return format_seconds(float(us) / 1e6)


def format_number(value: float) -> str:
    """1234567 -> '1,234,567'; 0.0246 -> '0.0246': counts and plain ratios."""
    value = float(value)
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def format_metric(name: str, value: float | int | None) -> str:
    """A result metric by its dotted name (``*_bytes``, ``*_us``, ``*_s``, ``*_tps``), '-' for None."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value).lower()
    return metric_formatter(name)(value)


def metric_formatter(name: str):
    """The formatter ``format_metric`` uses for ``name``: for columns of one metric."""
    if "_bytes" in name or name.endswith("_size"):
        return format_size
    if name.endswith("_us") or name.startswith("latency_us."):
        return format_microseconds
    if name.endswith("_s") or name.endswith("seconds"):
        return format_seconds
    if name.endswith("_tps"):
        return lambda v: f"{format_number(v)} tx/s"
    return format_number
