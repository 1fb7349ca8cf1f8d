"""The per-client cost measured by earlier runs of a kernel and image (the results store).

Every run measures what one idle client costs at the ready barrier (``client_cost`` in
the result document); the store keeps it in the ``metrics`` table as
``client_cost.per_client_bytes``.  ``predict --kernel`` and the matrix preflight use the
median over the runs of that kernel and image, and say which runs it came from; with no
such run they fall back to the built-in estimate and say so.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .feasibility import ClientCost

METRIC = "client_cost.per_client_bytes"


def measured_cost(store, kernel: str, image: str = "micro") -> ClientCost:
    """The median measured per-client cost of ``kernel`` in ``image`` guests, else the estimate."""
    rows = store.metric_rows(kernel, METRIC)
    values, runs = [], []
    for run_id, scenario, value in rows:
        try:
            run_image = (json.loads(scenario).get("guest") or {}).get("image", "micro")
        except (TypeError, ValueError):
            continue
        if run_image == image:
            values.append(value)
            runs.append(run_id)
    if not values:
        return ClientCost.builtin()
    return ClientCost(int(statistics.median(values)), "measured", tuple(runs))


def cost_from_file(path: "Path | str | None", kernel: str, image: str = "micro") -> ClientCost:
    """As ``measured_cost`` for a results store (file or URL) that may not exist (then: the estimate)."""
    from ..results.location import results_location
    from ..results.store import ResultStore
    if path is None:
        return ClientCost.builtin()
    location = results_location(path)
    if not location.exists():
        return ClientCost.builtin()
    with ResultStore(location) as store:
        return measured_cost(store, kernel, image)
