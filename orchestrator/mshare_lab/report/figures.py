"""The report's figures, drawn by matplotlib (Agg, no display) and kept as PNG data URIs.

Each function takes the gathered runs and returns a ``Figure``: the image, or no image
and a sentence saying why there is nothing to draw (no completed runs, a single point).
Figures are built with ``matplotlib.figure.Figure`` directly rather than pyplot, so no
global state is shared between reports built in one process.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass

import matplotlib
matplotlib.use("Agg")    # before anything imports pyplot: never look for a display
from matplotlib.figure import Figure as MplFigure   # noqa: E402
from matplotlib.lines import Line2D                  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter   # noqa: E402

from ..lab.record import RunRecord                   # noqa: E402
from ..results.compare import OOM, Comparison       # noqa: E402
from ..units import format_size, metric_formatter, short_size   # noqa: E402
from ..workload import predict as predict_mod        # noqa: E402
from . import data                                   # noqa: E402

DPI = 96
#: outcome colours, the same in every figure and in the table
OUTCOME_COLOURS = {
    "completed": "#2e7d32", "oom": "#c62828", "unsupported": "#9e9e9e",
    "guest-hang": "#ef6c00", "guest-panic": "#6a1b9a", "infra-error": "#212121",
}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: the phases marked on the time-series plots, with short labels
PHASE_LABELS = {"attach": "attach", "barrier": "barrier", "transactions": "tx", "parked": "detach", "oom": "oom"}
#: a run with nothing left of the region's page tables is drawn at this floor on log axes
LOG_FLOOR = 1024
#: small multiples drawn at most (the table lists every run)
MAX_TIMELINES = 24


@dataclass(frozen=True)
class Figure:
    key: str                    # the section id in the page
    title: str
    caption: str
    image: str | None = None    # data:image/png;base64,... or None when there is nothing to draw
    note: str = ""              # why there is no image
    width: int = 0
    height: int = 0


def _palette(names: list[str]) -> dict[str, str]:
    colours = matplotlib.colormaps["tab10"].colors
    return {name: matplotlib.colors.to_hex(colours[i % len(colours)]) for i, name in enumerate(names)}


def _encode(fig: MplFigure) -> tuple[str, int, int]:
    buffer = io.BytesIO()
    # metadata without the Software key: the same figure gives the same bytes
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    width, height = (int(round(v * DPI)) for v in fig.get_size_inches())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"), width, height


def _finish(key: str, title: str, caption: str, fig: MplFigure) -> Figure:
    fig.tight_layout()
    uri, width, height = _encode(fig)
    return Figure(key, title, caption, uri, width=width, height=height)


def _size_label(value: float) -> str:
    return format_size(value, 1).replace(".0 ", " ") if value > 0 else "0"


def _bytes_axis(axis, log: bool = False) -> None:
    if log:
        # powers of 4 (1 KiB, 4 KiB, ... 1 GiB): round binary sizes, not powers of ten
        axis.set_major_locator(LogLocator(base=4))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: _size_label(v)))


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


# --- theory -------------------------------------------------------------------------------

def theory(runs: list[RunRecord]) -> Figure:
    key, title = "theory", "Page tables against the 8-bytes-per-page theory"
    caption = ("Measured region page-table bytes against clients × working set / 512 (8 bytes of PTE "
               "per 4 KiB page per client), log-log. Private page tables lie on y = x; shared ones far "
               "below, near one page-table page per client or less. "
               f"Runs with nothing measurable left are drawn at {format_size(LOG_FLOOR, 0)}.")
    points = []
    for r in runs:
        x, y = _number(r.metric("theory_pte_bytes")), _number(r.metric("region_pagetable_bytes"))
        if x and x > 0 and y is not None:
            points.append((r, x, max(y, LOG_FLOOR)))
    if not points:
        return Figure(key, title, caption, note="No run measured page tables against the theory "
                                                "(no completed or OOM run with a result document).")
    mechanisms = sorted({r.scenario.workload.mechanism for r, _, _ in points})
    kernels = sorted({r.scenario.kernel for r, _, _ in points})
    colour = _palette(mechanisms)
    marker = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(kernels)}
    fig = MplFigure(figsize=(7.5, 5.2))
    ax = fig.add_subplot()
    for r, x, y in points:
        ax.scatter(x, y, s=46, color=colour[r.scenario.workload.mechanism], marker=marker[r.scenario.kernel],
                   edgecolors="black", linewidths=0.5, zorder=3)
    xs = [x for _, x, _ in points]
    low, high = min(xs) / 4, max(xs) * 4
    ax.plot([low, high], [low, high], color="black", linewidth=1, label="y = x (private page tables)")
    # one 4 KiB PMD-level page per client: clients × 4096 = x × 4096 × 512 / working set
    for ws in sorted({_number(r.metric("working_set_bytes")) or 0 for r, _, _ in points}):
        if ws > 0:
            factor = 4096 * 512 / ws
            ax.plot([low, high], [low * factor, high * factor], linestyle="--", color="#555555", linewidth=1,
                    label=f"one page-table page per client ({format_size(ws, 0)} working set)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _bytes_axis(ax.xaxis, log=True)
    _bytes_axis(ax.yaxis, log=True)
    ax.set_xlabel("theory: clients × working set / 512")
    ax.set_ylabel("measured region page tables")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker="o", color=colour[m], markeredgecolor="black", label=m)
               for m in mechanisms]
    handles += [Line2D([], [], linestyle="", marker=marker[k], color="white", markeredgecolor="black", label=k)
                for k in kernels]
    line_handles, _ = ax.get_legend_handles_labels()
    # lower right: private points sit on y = x and shared ones near the bottom left
    ax.legend(handles=handles + line_handles, fontsize=8, loc="lower right")
    return _finish(key, title, caption, fig)


# --- page tables over time ------------------------------------------------------------------

def timelines(runs: list[RunRecord]) -> Figure:
    key, title = "timelines", "Page tables over time"
    caption = ("PageTables (blue) and free memory (grey, right axis) as the workload sampled them; red "
               "lines are OOM kills; dotted lines mark where the phases began (attach, barrier, "
               "transactions, detach).")
    series = [(r, data.workload_series(r)) for r in runs]
    series = [(r, s) for r, s in series if s.get("pagetables_bytes")]
    if not series:
        return Figure(key, title, caption, note="No run has a stored time series.")
    omitted = max(0, len(series) - MAX_TIMELINES)
    series = series[:MAX_TIMELINES]
    if omitted:
        caption += f" The first {MAX_TIMELINES} runs are drawn, {omitted} more are in the table."
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    fig = MplFigure(figsize=(3.6 * cols, 2.5 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(series):]:
        ax.set_visible(False)
    for ax, (record, s) in zip(axes.flat, series):
        t = s["t_s"]
        ax.plot(t, s["pagetables_bytes"], color="#1565c0", linewidth=1.2)
        _bytes_axis(ax.yaxis)
        ax.tick_params(labelsize=7)
        ax.set_title(record.scenario_id, fontsize=7.5, color=OUTCOME_COLOURS.get(record.outcome, "black"))
        if "memfree_bytes" in s:
            free = ax.twinx()
            free.plot(t, s["memfree_bytes"], color="#9e9e9e", linewidth=0.9)
            _bytes_axis(free.yaxis)
            free.tick_params(labelsize=6, colors="#757575")
        kills = s.get("oom_kill") or []
        for i in range(1, len(kills)):
            if kills[i] > kills[i - 1]:
                ax.axvline(t[i], color="#c62828", linewidth=1)
        for phase, at in data.phases(record).items():
            if phase in PHASE_LABELS:
                ax.axvline(at, color="#424242", linestyle=":", linewidth=0.8)
                ax.text(at, 1.0, PHASE_LABELS[phase], transform=ax.get_xaxis_transform(), fontsize=6,
                        rotation=90, va="top", ha="right", color="#424242")
        ax.set_xlabel("s", fontsize=7, labelpad=1)
    return _finish(key, title, caption, fig)


# --- comparison -----------------------------------------------------------------------------

def comparison(result: Comparison) -> Figure:
    key, title = "comparison", f"Comparison by {result.by}"
    caption = (f"Mean ± sample standard deviation per point, grouped by {result.by}; the label is the change "
               "against the baseline and Welch's t-test p; * = p < 0.05.")
    metrics = [m for m in dict.fromkeys(row.metric for row in result.rows)
               if m != OOM and any(row.mean is not None for row in result.rows if row.metric == m)]
    if not metrics:
        return Figure(key, title, caption, note="No runs to compare.")
    groups = list(dict.fromkeys(row.group for row in result.rows))
    colour = _palette(groups)
    cols = min(2, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    most = max(len({row.point for row in result.rows if row.metric == m}) for m in metrics)
    fig = MplFigure(figsize=(max(4.8, 1.3 * most * max(1, len(groups))) * cols / 1.4, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    width = 0.8 / max(1, len(groups))
    for ax, name in zip(axes.flat, metrics):
        show = metric_formatter(name)
        # only the points where this metric was measured (no empty slots for OOM-only points)
        points = list(dict.fromkeys(row.point for row in result.rows if row.metric == name and row.mean is not None))
        for gi, group in enumerate(groups):
            for pi, point in enumerate(points):
                try:
                    row = result.row(point, group, name)
                except KeyError:
                    continue
                if row.mean is None:
                    continue
                x = pi + (gi - (len(groups) - 1) / 2) * width
                ax.bar(x, row.mean, width=width * 0.9, color=colour[group], yerr=row.stdev or 0, capsize=3,
                       label=group if pi == 0 else None)
                label = "base" if row.baseline else (
                    ("" if row.change_pct is None else f"{row.change_pct:+.0f}%")
                    + ("" if row.p_value is None else f"\np={row.p_value:.2g}") + ("*" if row.significant else ""))
                if label:
                    ax.annotate(label, (x, row.mean + (row.stdev or 0)), textcoords="offset points",
                                xytext=(0, 2), ha="center", va="bottom", fontsize=6.5)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(points)), [p.replace("/", "\n", 1) for p in points], fontsize=6.5)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos, show=show: show(v)))
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.25)
        ax.grid(True, axis="y", alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    return _finish(key, title, caption, fig)


# --- OOM map -----------------------------------------------------------------------------

def oom_boundary(ram: int, regions: list[int], mechanism: str = "shmem") -> list[tuple[int, int]]:
    """(region, most clients that fit) per region: where ``predict`` says page tables + region exceed RAM."""
    out = []
    for region in regions:
        if predict_mod.predict(region, 1, ram, mechanism).fits is False:
            out.append((region, 0))
            continue
        low, high = 1, 1
        while predict_mod.predict(region, high, ram, mechanism).fits and high < 1 << 24:
            low, high = high, high * 2
        while high - low > 1:        # predict is monotonic in clients: bisect the last that fits
            mid = (low + high) // 2
            if predict_mod.predict(region, mid, ram, mechanism).fits:
                low = mid
            else:
                high = mid
        out.append((region, low))
    return out


def oom_map(runs: list[RunRecord]) -> Figure:
    key, title = "oom-map", "OOM map"
    caption = ("Every run at its region size and client count, coloured by outcome, one marker per guest RAM; "
               "the lines are where `mshare-lab predict` puts page tables + region above the guest's RAM "
               "(4 KiB pages, no sharing): runs above a line should not fit.")
    cells = [r for r in runs if r.outcome != "infra-error"]
    if not cells:
        return Figure(key, title, caption, note="No runs with a kernel result.")
    rams = sorted({r.scenario.guest.memory for r in cells})
    marker = {ram: MARKERS[i % len(MARKERS)] for i, ram in enumerate(rams)}
    fig = MplFigure(figsize=(7.5, 4.8))
    ax = fig.add_subplot()
    for r in cells:
        ax.scatter(r.scenario.workload.sga, r.scenario.workload.clients, s=90, marker=marker[r.scenario.guest.memory],
                   color=OUTCOME_COLOURS.get(r.outcome, "black"), edgecolors="black", linewidths=0.5,
                   alpha=0.85, zorder=3)
    sizes = [r.scenario.workload.sga for r in cells]
    clients = [r.scenario.workload.clients for r in cells]
    low, high = max(1 << 20, min(sizes) // 4), max(sizes) * 4
    regions = []
    region = low
    while region <= high:
        regions.append(region)
        region = int(region * 1.25) + 1
    for ram in rams:
        line = [(x, y) for x, y in oom_boundary(ram, regions) if y > 0]
        if line:
            ax.plot([x for x, _ in line], [y for _, y in line], linestyle="--", linewidth=1.2, color="#37474f",
                    marker=marker[ram], markevery=[len(line) // 2], markersize=6,
                    label=f"predict: fills {short_size(ram)} of guest RAM")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(max(1, min(clients) / 4), max(clients) * 4)
    _bytes_axis(ax.xaxis, log=True)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.set_xlabel("region (sga)")
    ax.set_ylabel("clients")
    ax.grid(True, alpha=0.3)
    outcomes = sorted({r.outcome for r in cells})
    handles = [Line2D([], [], linestyle="", marker="s", color=OUTCOME_COLOURS.get(o, "black"),
                      markeredgecolor="black", label=o) for o in outcomes]
    handles += [Line2D([], [], linestyle="", marker=marker[ram], color="white", markeredgecolor="black",
                       label=f"guest RAM {short_size(ram)}") for ram in rams]
    line_handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + line_handles, fontsize=8, loc="upper right")
    return _finish(key, title, caption, fig)


# --- protection change ----------------------------------------------------------------------

def protection(runs: list[RunRecord]) -> Figure:
    key, title = "protection", "Protection change across clients"
    caption = ("Time from asking for read-only until every client runs with it, against clients, per mechanism: "
               "circles signal every client to mprotect its own mapping (per-client), squares are one "
               "change by the owner of shared page tables.")
    points = []
    for r in runs:
        us, n = _number(r.metric("protect_change_us")), _number(r.metric("clients_attached"))
        if us is not None and us > 0 and n:
            points.append((r, n, us / 1e6))
    if not points:
        return Figure(key, title, caption, note="No run timed a protection change (it happens after the "
                                                "transactions; OOM-stopped and unsupported runs have none).")
    mechanisms = sorted({r.scenario.workload.mechanism for r, _, _ in points})
    colour = _palette(mechanisms)
    fig = MplFigure(figsize=(7.0, 4.2))
    ax = fig.add_subplot()
    for r, n, seconds in points:
        mode = r.metric("protect_mode")
        ax.scatter(n, seconds, s=50, color=colour[r.scenario.workload.mechanism],
                   marker="s" if mode == "owner" else "o", edgecolors="black", linewidths=0.5, zorder=3)
    ax.set_yscale("log")
    ax.set_xscale("log")
    show = metric_formatter("protect_change_s")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: show(v)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("clients attached")
    ax.set_ylabel("until the last client runs read-only")
    ax.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], linestyle="", marker="o", color=colour[m], markeredgecolor="black", label=m)
               for m in mechanisms]
    ax.legend(handles=handles, fontsize=8)
    return _finish(key, title, caption, fig)
