"""Time series as the store keeps them: (series name, t, value) points.

The monitor and the workload each write series in the shape that suits them; the store
accepts the three shapes they use and flattens them to points:

* columns: ``{"t_s": [0, 1], "pagetables_bytes": [10, 20]}`` (one time column, any number of
  value columns of the same length);
* pairs per series: ``{"pagetables_bytes": [[0, 10], [1, 20]]}``;
* rows: ``[{"t_s": 0, "pagetables_bytes": 10, "clients": 3}, ...]`` (each numeric field a series).
"""

from __future__ import annotations

from typing import Any, Iterator

TIME_KEYS = ("t_s", "t", "time_s", "time")


def points(data: Any) -> Iterator[tuple[str, float, float]]:
    """Yield (series, t, value) for every numeric sample; anything else is skipped."""
    if isinstance(data, list):
        yield from _rows(data)
    elif isinstance(data, dict):
        time_key = next((k for k in TIME_KEYS if isinstance(data.get(k), list)), None)
        if time_key is not None:
            yield from _columns(data, time_key)
        else:
            for name, samples in data.items():
                if isinstance(samples, list):
                    yield from _pairs(str(name), samples)


def _columns(data: dict, time_key: str) -> Iterator[tuple[str, float, float]]:
    times = data[time_key]
    for name, values in data.items():
        if name == time_key or not isinstance(values, list):
            continue
        for t, value in zip(times, values):
            if _number(t) and _number(value):
                yield str(name), float(t), float(value)


def _pairs(name: str, samples: list) -> Iterator[tuple[str, float, float]]:
    for sample in samples:
        if isinstance(sample, (list, tuple)) and len(sample) == 2 and _number(sample[0]) and _number(sample[1]):
            yield name, float(sample[0]), float(sample[1])
        elif isinstance(sample, dict):
            t = next((sample[k] for k in TIME_KEYS if k in sample), None)
            value = sample.get("value")
            if _number(t) and _number(value):
                yield name, float(t), float(value)


def _rows(rows: list) -> Iterator[tuple[str, float, float]]:
    for row in rows:
        if not isinstance(row, dict):
            continue
        time_key = next((k for k in TIME_KEYS if k in row), None)
        if time_key is None or not _number(row[time_key]):
            continue
        for name, value in row.items():
            if name != time_key and _number(value):
                yield str(name), float(row[time_key]), float(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
