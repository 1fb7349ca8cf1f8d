"""The lab file: which libvirt hosts the lab may use, and how much of each.

A passive description (labgrid's resources): nothing here connects to anything. Each host
key is declared once in ``HOST_OPTIONS`` and validated with the matrix's own YAML loader,
so a mistake is reported as ``lab.yaml:7: ram: ...`` with what to do. Without a lab file
the lab is one host, ``local``, on the default libvirt URI: today's single-machine lab.

    hosts:
      - name: here
        uri: qemu:///system
        ram: 6G            # most guest RAM the lab may use there (default: what libvirt says is free)
        vcpus: 2           # most guest vCPUs at once there (default: the host's CPUs)
        parallel: 2        # guests at once there (default: --parallel)
      - name: rack2
        uri: qemu+ssh://root@rack2.example/system
        ssh_key: ~/.ssh/lab_ed25519        # default: the lab's own key
        known_hosts: ~/.ssh/known_hosts    # default: ssh's own
        pool: /var/lib/mshare-lab/pool     # the host's artifact cache (a libvirt storage pool)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, Location
from ..options import Option, positive_int, size

DEFAULT_POOL = "/var/lib/mshare-lab/pool"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
#: libvirt transports that reach the libvirtd of this machine
_LOCAL_TRANSPORTS = ("", "unix")


def _uri(value: Any) -> str:
    text = str(value).strip()
    parts = urlsplit(text)
    driver = parts.scheme.split("+", 1)[0]
    if driver != "qemu":
        raise ValueError(f"'{text}' is not a QEMU libvirt URI (qemu:///system, qemu+ssh://root@host/system)")
    if parts.path not in ("/system", "/session"):
        raise ValueError(f"'{text}' names neither /system nor /session")
    if not is_local(text) and not parts.hostname:
        raise ValueError(f"'{text}' names a transport but no host")
    return text


def _name(value: Any) -> str:
    text = str(value)
    if not _NAME.fullmatch(text):
        raise ValueError(f"'{text}' is not a host name: letters, digits, '.', '_' and '-', at most 40")
    return text


def _path(value: Any) -> Path:
    return Path(str(value)).expanduser()


def _pool(value: Any) -> str:
    text = str(value)
    if not text.startswith("/"):
        raise ValueError(f"'{text}' is not an absolute path on the host")
    return text


HOST_OPTIONS: tuple[Option, ...] = (
    Option("name", _name, None, "host name used in records and messages", "NAME"),
    Option("uri", _uri, None, "libvirt URI of the host", "URI"),
    Option("ram", size, None, "most guest RAM the lab may use on the host", "SIZE"),
    Option("vcpus", positive_int, None, "most guest vCPUs the lab may run at once on the host", "N"),
    Option("parallel", positive_int, None, "guests at once on the host (default: --parallel)", "N"),
    Option("ssh_key", _path, None, "private key for qemu+ssh (default: the lab's key)", "FILE"),
    Option("known_hosts", _path, None, "known_hosts file for qemu+ssh (default: ssh's own)", "FILE"),
    Option("pool", _pool, DEFAULT_POOL, "directory of the host's artifact cache (a libvirt dir pool)", "DIR"),
)
_KEYS = tuple(o.key for o in HOST_OPTIONS)


def is_local(uri: str) -> bool:
    """True for URIs that reach this machine's libvirtd (qemu:///system, qemu+unix:///...)."""
    parts = urlsplit(uri)
    transport = parts.scheme.split("+", 1)[1] if "+" in parts.scheme else ""
    return transport in _LOCAL_TRANSPORTS and not parts.hostname


@dataclass(frozen=True)
class HostSpec:
    """One host of the lab, as the lab file describes it."""

    name: str
    uri: str
    ram: int | None = None
    vcpus: int | None = None
    parallel: int | None = None
    ssh_key: Path | None = None
    known_hosts: Path | None = None
    pool: str = DEFAULT_POOL
    source: str | None = None          # file:line of its entry

    @property
    def local(self) -> bool:
        return is_local(self.uri)


@dataclass(frozen=True)
class LabFile:
    hosts: tuple[HostSpec, ...]
    path: Path | None = None
    notes: tuple[str, ...] = field(default=())

    def host(self, name: str) -> HostSpec:
        for spec in self.hosts:
            if spec.name == name:
                return spec
        raise KeyError(name)


def default_lab(uri: str | None = None) -> LabFile:
    """The lab with no lab file: this machine's libvirt (``--uri`` or the default URI)."""
    from ..guest.libvirt_driver import default_uri
    return LabFile(hosts=(HostSpec(name="local", uri=uri or default_uri()),))


def load(path: Path | str) -> LabFile:
    """Read and validate a lab file; ConfigError naming file:line on any mistake."""
    from ..lab.matrix import LineList, LineMap, load_yaml_file
    path = Path(path)
    doc = load_yaml_file(path)
    where = lambda line: Location(path, line)  # noqa: E731 (the matrix loader's idiom)
    if not isinstance(doc, LineMap) or "hosts" not in doc:
        raise ConfigError("a lab file is a mapping with a 'hosts:' list", location=where(getattr(doc, "line", 1)),
                          hint="see docs/lab.md for an example")
    unknown = [k for k in doc if k != "hosts"]
    if unknown:
        raise ConfigError(f"unknown top-level key '{unknown[0]}'", location=where(doc.line_of(unknown[0])),
                          hint="a lab file has only 'hosts:'")
    entries = doc["hosts"]
    if not isinstance(entries, LineList) or not entries:
        raise ConfigError("'hosts' must be a non-empty list", location=where(doc.line_of("hosts")))
    hosts: list[HostSpec] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(entries):
        line = entries.line_of(index)
        if not isinstance(raw, LineMap):
            raise ConfigError("a host entry must be a mapping", location=where(line),
                              hint="e.g. '- {name: here, uri: qemu:///system}'")
        spec = _host(raw, where)
        if spec.name in seen:
            raise ConfigError(f"host name '{spec.name}' is used twice (first on line {seen[spec.name]})",
                              location=where(raw.line))
        seen[spec.name] = raw.line
        hosts.append(spec)
    _reject_same_uri(hosts, where)
    return LabFile(hosts=tuple(hosts), path=path)


def _host(raw: Any, where) -> HostSpec:
    import difflib
    values: dict[str, Any] = {}
    by_key = {o.key: o for o in HOST_OPTIONS}
    for key, value in raw.items():
        option = by_key.get(key)
        if option is None:
            close = difflib.get_close_matches(str(key), _KEYS, n=1)
            raise ConfigError(f"unknown host key '{key}'", location=where(raw.line_of(key)),
                              hint=f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(_KEYS)}")
        try:
            values[key] = option.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}", location=where(raw.line_of(key))) from None
    for key in ("name", "uri"):
        if key not in values:
            raise ConfigError(f"a host needs '{key}'", location=where(raw.line))
    if values.get("ssh_key") is not None and not values["ssh_key"].is_file():
        raise ConfigError(f"ssh_key: no such file {values['ssh_key']}", location=where(raw.line_of("ssh_key")))
    if values.get("known_hosts") is not None and not values["known_hosts"].is_file():
        raise ConfigError(f"known_hosts: no such file {values['known_hosts']}",
                          location=where(raw.line_of("known_hosts")))
    return HostSpec(source=str(where(raw.line)), **values)


def _reject_same_uri(hosts: list[HostSpec], where) -> None:
    """Two entries for one libvirtd would double its capacity: refuse identical URIs."""
    seen: dict[str, HostSpec] = {}
    for spec in hosts:
        key = spec.uri.split("?", 1)[0].rstrip("/")
        if key in seen:
            raise ConfigError(f"hosts '{seen[key].name}' and '{spec.name}' have the same URI {key}",
                              location=Location(*_split_source(spec.source)))
        seen[key] = spec


def _split_source(source: str | None) -> tuple[str | None, int | None]:
    if not source or ":" not in source:
        return source, None
    path, _, line = source.rpartition(":")
    return path, int(line) if line.isdigit() else None
