"""The scenario matrix file: kernels x mechanisms x sizes x clients x guest shapes x repeats.

A matrix file is YAML (format in docs/results.md)::

    defaults: {duration: 2, ram: 4G}
    matrix:
      - name: shmem-growth
        kernels: [debian-6.1]
        mechanisms: [shmem, sysv]
        sga: [64M, 256M]
        clients: 100
        repeats: 3
        expect: {outcome: completed, pte_ratio_max: 1.3}

Every key that takes a list also takes a scalar; an entry expands into the cartesian
product of its lists, times ``repeats``. Workload keys are validated by
``mshare_lab.options`` (the same declarations as the CLI flags), guest keys by
``GUEST_OPTIONS`` below, expectation keys by ``lab.expectations``. Every error is a
``ConfigError`` naming file:line and the fix, because the YAML is loaded with a loader
that remembers where each key and list item came from.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from .. import mechanisms, options
from ..errors import ConfigError, Location
from ..options import WORKLOAD_OPTIONS, Option, WorkloadSpec
from . import expectations
from .scenario import GuestShape, Scenario
# --- YAML that remembers line numbers -------------------------------------------------
# PyYAML's safe loader forgets where a value came from once it builds plain dicts and
# lists; this one builds dict/list subclasses that also carry the line of the mapping,
# of each key and of each list item.

class LineMap(dict):
    """A YAML mapping that knows its own line and the line of each key (1-based)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.line = 0
        self.key_lines: dict[Any, int] = {}

    def line_of(self, key: Any) -> int:
        return self.key_lines.get(key, self.line)


class LineList(list):
    """A YAML sequence that knows its own line and the line of each item (1-based)."""

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.line = 0
        self.item_lines: list[int] = []

    def line_of(self, index: int) -> int:
        return self.item_lines[index] if 0 <= index < len(self.item_lines) else self.line


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences keep their marks."""


def _construct_map(loader: _LineLoader, node: yaml.MappingNode):
    data = LineMap()
    data.line = node.start_mark.line + 1
    yield data
    # PyYAML silently keeps the last of two equal keys; in a matrix that hides a typo'd
    # copy-paste, so it is an error here
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if isinstance(key, str) and key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
    data.update(loader.construct_mapping(node))
    data.key_lines = {loader.construct_object(k): k.start_mark.line + 1
                      for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode):
    data = LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def load_yaml_text(text: str, path: Path | str | None = None) -> Any:
    """Parse YAML text; syntax errors become ConfigError at the line YAML reports."""
    loader = _LineLoader(text)
    try:
        return loader.get_single_data()
    except _DuplicateKey as dup:
        raise ConfigError(f"key '{dup.key}' appears twice (first on line {dup.first})",
                          location=Location(path, dup.second),
                          hint="remove one of them or merge their values into a list") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        if exc.context_mark and mark and exc.context_mark.line != mark.line:
            problem += f" (the construct began on line {exc.context_mark.line + 1})"
        raise ConfigError(f"malformed YAML: {problem}",
                          location=Location(path, mark.line + 1 if mark else None),
                          hint="check the indentation, a missing ':' or an unclosed bracket or quote") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {exc}", location=Location(path)) from exc
    finally:
        loader.dispose()


def load_yaml_file(path: Path | str) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError("file not found", location=Location(path),
                          hint="check the path; examples/ holds ready matrix files") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", location=Location(path)) from exc
    return load_yaml_text(text, path)


# --- guest options: declared once, like the workload options ---------------------------

def _image(value: Any) -> str:
    if value not in IMAGES:
        raise ValueError(f"'{value}' is not an image; choose {' or '.join(IMAGES)}")
    return str(value)


def _timeout(value: Any) -> float:
    seconds = options.seconds(value)   # the workload's own seconds parser: one spelling
    if seconds <= 0:
        raise ValueError(f"'{value}' must be more than 0 seconds")
    return seconds


IMAGES = ("micro", "debian")
_SHAPE = GuestShape()

GUEST_OPTIONS: tuple[Option, ...] = (
    Option("ram", options.size, _SHAPE.memory, "guest RAM (e.g. 1G, 4G)", "SIZE"),
    Option("vcpus", options.positive_int, _SHAPE.vcpus, "guest virtual CPUs", "N"),
    Option("image", _image, _SHAPE.image, "guest image: micro (initramfs) or debian (disk, Ansible)", "NAME"),
    Option("timeout", _timeout, _SHAPE.timeout, "seconds before a run is declared a guest-hang", "SECONDS"),
    Option("hugepage_backing", options.boolean, _SHAPE.hugepage_backing, "back guest RAM with host huge pages", "BOOL"),
)

#: GuestShape field for each guest option key (the YAML says ram, the model says memory)
_GUEST_FIELD = {"ram": "memory", "vcpus": "vcpus", "image": "image", "timeout": "timeout",
                "hugepage_backing": "hugepage_backing"}


def guest_shape(values: dict[str, Any]) -> GuestShape:
    """A GuestShape from validated guest option values (missing keys keep their default)."""
    return GuestShape(**{_GUEST_FIELD[k]: v for k, v in values.items() if k in _GUEST_FIELD})


# --- the matrix model ------------------------------------------------------------------

_AXES = {"kernels": "kernel", "kernel": "kernel", "mechanisms": "mechanism", "mechanism": "mechanism"}
_WORKLOAD_KEYS = tuple(o.key for o in WORKLOAD_OPTIONS if o.key != "mechanism")
_GUEST_KEYS = tuple(o.key for o in GUEST_OPTIONS)
#: product order: the id's own dimensions first so the expansion reads like the ids
_PRODUCT_ORDER = ("kernel", "mechanism", "sga", "clients", "ram", "image",
                  *(k for k in _WORKLOAD_KEYS if k not in ("sga", "clients")),
                  *(k for k in _GUEST_KEYS if k not in ("ram", "image")))
ENTRY_KEYS = ("name", "kernels", "mechanisms", "kernel", "mechanism", "repeats", "expect",
              *_WORKLOAD_KEYS, *_GUEST_KEYS)
DEFAULT_KEYS = tuple(k for k in ENTRY_KEYS if k != "name")
TOP_KEYS = ("defaults", "matrix")
_KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


@dataclass(frozen=True)
class Matrix:
    path: Path | None
    scenarios: list[Scenario]
    defaults: dict[str, Any] = field(default_factory=dict)   # validated values, YAML key names
    names: dict[str, str] = field(default_factory=dict)      # scenario_id -> entry name, if named

    def __len__(self) -> int:
        return len(self.scenarios)


#: a matrix larger than this is refused unless the user says --yes: 146,685 scenarios
#: would take 1 GB to hold and months of guest time, which is never what was meant
MAX_SCENARIOS = 2000
#: rough guest time of one scenario under TCG, for the estimate the refusal prints:
#: boot + teardown, plus the workload's own time per client (fork, attach, populate)
SCENARIO_OVERHEAD_S = 30.0
SECONDS_PER_CLIENT = 0.01


def load(path: Path | str, *, max_scenarios: int | None = MAX_SCENARIOS) -> Matrix:
    """Read, validate and expand a matrix file; ConfigError with file:line on any mistake.

    ``max_scenarios`` (None: no limit) refuses a matrix that expands to more scenarios
    before it is expanded, saying how many and how long they would take."""
    path = Path(path)
    return _build(load_yaml_file(path), path, max_scenarios)


def loads(text: str, path: Path | str | None = None, *, max_scenarios: int | None = MAX_SCENARIOS) -> Matrix:
    """As ``load`` for YAML text (path only names the source in errors)."""
    return _build(load_yaml_text(text, path), Path(path) if path else None, max_scenarios)


class _Where:
    """Makes Locations in one file."""

    def __init__(self, path: Path | None):
        self.path = path

    def __call__(self, line: int | None) -> Location:
        return Location(self.path, line)

    def source(self, line: int) -> str:
        return f"{self.path or '<input>'}:{line}"


def _build(doc: Any, path: Path | None, max_scenarios: int | None = MAX_SCENARIOS) -> Matrix:
    where = _Where(path)
    if doc is None:
        raise ConfigError("the file is empty", location=where(1),
                          hint="add a 'matrix:' list of entries (see docs/results.md)")
    if not isinstance(doc, LineMap):
        raise ConfigError("the top level must be a mapping with 'matrix:' (and optional 'defaults:')",
                          location=where(getattr(doc, "line", 1)))
    _reject_unknown(doc, TOP_KEYS, where, "top-level key")
    if "matrix" not in doc:
        raise ConfigError("no 'matrix:' key", location=where(doc.line),
                          hint="add 'matrix:' with a list of entries (see docs/results.md)")
    raw_defaults = doc.get("defaults") or LineMap()
    if not isinstance(raw_defaults, LineMap):
        raise ConfigError("'defaults' must be a mapping", location=where(doc.line_of("defaults")))
    _reject_unknown(raw_defaults, DEFAULT_KEYS, where, "key in defaults")
    defaults = _Entry(raw_defaults, where)

    entries = doc["matrix"]
    if not isinstance(entries, LineList) or not entries:
        raise ConfigError("'matrix' must be a non-empty list of entries", location=where(doc.line_of("matrix")),
                          hint="write each entry as '- kernels: [...]' under 'matrix:'")

    scenarios: list[Scenario] = []
    names: dict[str, str] = {}
    first_seen: dict[str, str] = {}
    parsed: list[_Entry] = []
    for index, raw in enumerate(entries):
        line = entries.line_of(index)
        if not isinstance(raw, LineMap):
            raise ConfigError("a matrix entry must be a mapping", location=where(line),
                              hint="e.g. '- {kernels: debian-6.1, mechanisms: shmem, sga: 256M}'")
        _reject_unknown(raw, ENTRY_KEYS, where, "key in a matrix entry")
        parsed.append(_Entry(raw, where, defaults))
    if max_scenarios is not None:
        _refuse_huge(parsed, max_scenarios, where(doc.line_of("matrix")))
    for entry in parsed:
        raw = entry.raw
        for scenario in entry.expand(where.source(raw.line)):
            _reject_impossible(scenario, entry)
            sid = scenario.scenario_id
            if sid in first_seen:
                raise ConfigError(
                    f"scenario {sid} is declared twice: by {first_seen[sid]} and by {scenario.source}",
                    location=where(raw.line),
                    hint="ids are kernel/mechanism/sga/x<clients>/ram<size>#repeat: change one of "
                         "these, or use 'repeats:' instead of a second copy")
            first_seen[sid] = scenario.source or ""
            if entry.name:
                names[sid] = entry.name
            scenarios.append(scenario)
    return Matrix(path=path, scenarios=scenarios, defaults=defaults.values(), names=names)


def _refuse_huge(entries: list["_Entry"], limit: int, location: Location) -> None:
    """Count (without expanding) and refuse above ``limit``, with an estimate of the time."""
    count, seconds = 0, 0.0
    for entry in entries:
        n = (entry.repeats or 1) * math.prod(len(v) for v in entry.dims.values())
        clients = entry.dims.get("clients") or [0]
        duration = entry.dims.get("duration") or [WorkloadSpec().duration]
        count += n
        seconds += n * (SCENARIO_OVERHEAD_S + sum(duration) / len(duration)
                        + SECONDS_PER_CLIENT * sum(clients) / len(clients))
    if count > limit:
        raise ConfigError(f"the matrix expands to {count:,} scenarios (about {_duration(seconds)} of guest "
                          f"time at one at a time), more than the {limit:,} a run takes without asking",
                          location=location, hint="cut lists or repeats, or pass --yes to run it anyway")


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:.0f} s"


def _reject_impossible(scenario: Scenario, entry: "_Entry") -> None:
    """Expectations no run can meet and scenarios no guest can hold: found before any boot."""
    expect = scenario.expect
    raw_expect = entry.raw.get("expect") if isinstance(entry.raw.get("expect"), LineMap) else None

    def at(key: str) -> Location:
        if raw_expect is not None and key in raw_expect:
            return entry.where(raw_expect.line_of(key))
        return entry.where(entry.raw.line_of("expect") if "expect" in entry.raw else entry.raw.line)

    for key, low in expect.items():
        if not key.endswith("_min"):
            continue
        metric = key[:-4]
        high = expect.get(metric + "_max")
        if isinstance(low, (int, float)) and isinstance(high, (int, float)) and low > high:
            raise ConfigError(f"expect: {key} {low:g} is above {metric}_max {high:g}: no run can meet both",
                              location=at(key), hint=f"swap them or drop one ({scenario.scenario_id})")
    clients = scenario.workload.clients
    for key in ("clients_attached_min", "clients_started_min", "clients_requested_min", "oom_kills_min",
                "oom_kills.clients_killed_min", "protect_acked_min"):
        wanted = expect.get(key)
        if isinstance(wanted, (int, float)) and wanted > clients:
            raise ConfigError(f"expect: {key} {wanted:g} is more than the {clients} clients of "
                              f"{scenario.scenario_id}", location=at(key),
                              hint=f"lower {key} or raise clients")
    ratio_min = expect.get("pte_ratio_min")
    if isinstance(ratio_min, (int, float)) and ratio_min > 1.5:
        raise ConfigError(f"expect: pte_ratio_min {ratio_min:g} cannot be met: a region's page tables are "
                          "at most what private mappings cost (pte_ratio about 1)", location=at("pte_ratio_min"))
    # a region that alone does not fit in the guest (before any client cost is counted)
    from ..workload.feasibility import GUEST_RESERVE_BYTES
    from ..units import format_size
    guest, spec = scenario.guest, scenario.workload
    reserve = GUEST_RESERVE_BYTES.get(guest.image, GUEST_RESERVE_BYTES["micro"])
    if spec.sga > guest.memory - reserve and "oom" not in (expect.get("outcome") or []) and not spec.memory_limit:
        line = entry.raw.line_of("sga") if "sga" in entry.raw else entry.raw.line
        raise ConfigError(f"{scenario.scenario_id}: a {format_size(spec.sga)} {spec.mechanism} region cannot fit "
                          f"in a {format_size(guest.memory)} {guest.image} guest (less "
                          f"{format_size(reserve)} for its own kernel and userspace)",
                          location=entry.where(line),
                          hint="raise ram, lower sga, or say expect: {outcome: oom} when that is the point")


def _reject_unknown(mapping: LineMap, known: Iterable[str], where: _Where, what: str) -> None:
    known = tuple(known)
    for key in mapping:
        if isinstance(key, str) and key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
        raise ConfigError(f"unknown {what} '{key}'", location=where(mapping.line_of(key)), hint=hint)


class _Entry:
    """One validated matrix entry (or the defaults): lists of values per dimension."""

    def __init__(self, raw: LineMap, where: _Where, defaults: "_Entry | None" = None):
        self.where = where
        self.raw = raw
        self.name = self._name(raw)
        # dimension -> its validated values (a scalar in the file is a one-value list)
        self.dims: dict[str, list[Any]] = dict(defaults.dims) if defaults else {}
        self.repeats = defaults.repeats if defaults else None
        self.expect = dict(defaults.expect) if defaults else {}
        self._parse(raw)

    def _name(self, raw: LineMap) -> str | None:
        name = raw.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError("name: must be a text label", location=self.where(raw.line_of("name")))
        return name

    def _parse(self, raw: LineMap) -> None:
        axes = [k for k in raw if k in _AXES]
        for dim in ("kernel", "mechanism"):
            spelled = [k for k in axes if _AXES[k] == dim]
            if len(spelled) > 1:
                raise ConfigError(f"both '{spelled[0]}' and '{spelled[1]}' are given",
                                  location=self.where(raw.line_of(spelled[1])), hint=f"keep only '{dim}s'")
        for key, value in raw.items():
            if key in ("name",):
                continue
            if key == "repeats":
                self.repeats = self._repeats(raw, value)
            elif key == "expect":
                self.expect.update(self._expect(raw, value))
            elif key in _AXES and _AXES[key] == "kernel":
                self.dims["kernel"] = self._values(raw, key, _kernel_name)
            else:
                dim = _AXES.get(key, key)
                self.dims[dim] = self._values(raw, key, self._option_parser(dim))

    def _option_parser(self, dim: str):
        if dim in _GUEST_KEYS:
            opts = GUEST_OPTIONS
        else:
            opts = WORKLOAD_OPTIONS
        def parse(value: Any, locate) -> Any:
            if dim == "mechanism" and str(value) not in mechanisms.NAMES:
                close = difflib.get_close_matches(str(value), mechanisms.NAMES, n=1)
                raise ConfigError(f"mechanisms: unknown mechanism '{value}'", location=locate(dim),
                                  hint=(f"did you mean '{close[0]}'? " if close else "")
                                  + "choose from " + ", ".join(mechanisms.NAMES))
            # options.parse_mapping is the one validator of these keys, CLI and file alike
            return options.parse_mapping({dim: value}, locate=locate, options=opts)[dim]
        return parse

    def _values(self, raw: LineMap, key: str, parse) -> list[Any]:
        value = raw[key]
        if isinstance(value, LineList):
            if not value:
                raise ConfigError(f"{key}: the list is empty", location=self.where(raw.line_of(key)),
                                  hint="give at least one value or remove the key")
            items = [(item, value.line_of(i)) for i, item in enumerate(value)]
        elif isinstance(value, LineMap):
            raise ConfigError(f"{key}: expected a value or a list of values, not a mapping",
                              location=self.where(raw.line_of(key)))
        else:
            items = [(value, raw.line_of(key))]
        parsed = []
        for item, line in items:
            if item is None:
                raise ConfigError(f"{key}: a value is missing", location=self.where(line))
            parsed.append(parse(item, lambda _k, line=line: self.where(line)))
        return parsed

    def _repeats(self, raw: LineMap, value: Any) -> int:
        try:
            return options.positive_int(value)
        except ValueError as exc:
            raise ConfigError(f"repeats: {exc}", location=self.where(raw.line_of("repeats")),
                              hint="repeats is one whole number (runs of the same point)") from None

    def _expect(self, raw: LineMap, value: Any) -> dict[str, Any]:
        if not isinstance(value, LineMap):
            raise ConfigError("expect: must be a mapping like {outcome: completed, pte_ratio_max: 1.3}",
                              location=self.where(raw.line_of("expect")))
        checked = {}
        for key, wanted in value.items():
            try:
                checked[key] = expectations.validate(str(key), wanted)
            except ValueError as exc:
                raise ConfigError(f"expect: {exc}", location=self.where(value.line_of(key))) from None
        return checked

    def values(self) -> dict[str, Any]:
        """The validated values (for Matrix.defaults), in YAML key names."""
        out: dict[str, Any] = {k: (v[0] if len(v) == 1 else v) for k, v in self.dims.items()}
        if self.repeats:
            out["repeats"] = self.repeats
        if self.expect:
            out["expect"] = dict(self.expect)
        return out

    def expand(self, source: str) -> list[Scenario]:
        for dim, key in (("kernel", "kernels"), ("mechanism", "mechanisms"), ("sga", "sga"),
                         ("clients", "clients")):
            if dim not in self.dims:
                raise ConfigError(f"the entry has no '{key}'", location=self.where(self.raw.line),
                                  hint=f"add '{key}:' to the entry or to 'defaults:'")
        dims = [d for d in _PRODUCT_ORDER if d in self.dims]
        scenarios = []
        for combo in itertools.product(*(self.dims[d] for d in dims)):
            point = dict(zip(dims, combo))
            workload = WorkloadSpec(**{f.name: point[f.name] for f in fields(WorkloadSpec) if f.name in point})
            guest = guest_shape(point)
            for repeat in range(1, (self.repeats or 1) + 1):
                scenarios.append(Scenario(kernel=point["kernel"], workload=workload, guest=guest,
                                          repeat=repeat, expect=dict(self.expect), source=source))
        return scenarios


def _kernel_name(value: Any, locate) -> str:
    text = str(value)
    if isinstance(value, (bool, dict, list)) or not _KERNEL_NAME.fullmatch(text):
        raise ConfigError(f"kernels: '{value}' is not a kernel name", location=locate("kernels"),
                          hint="use the name 'mshare-lab kernel list' shows, e.g. debian-6.1")
    return text
