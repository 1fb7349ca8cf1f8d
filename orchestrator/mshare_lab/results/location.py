"""Where the results live: a local SQLite file or a shared PostgreSQL server.

Every command's ``--results`` goes through ``results_location`` (its argparse ``type``) and
every store is opened from the ``ResultsLocation`` it returns, so "is this a URL or a path"
is decided here and nowhere else. A URL's password is never shown: ``str(location)`` and
every message use the redacted form.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import NotFoundError, UserError
from ..paths import default_results_db

#: what libpq accepts as a connection URI scheme
URL_SCHEMES = ("postgresql", "postgres")
REDACTED = "***"


class ResultsFileError(UserError):
    """The results file is not one this mshare-lab can read (corrupt, or from a newer version)."""


class ResultsServerError(UserError):
    """The PostgreSQL results server cannot be reached or refused us: a setting to fix, not a crash."""


@dataclass(frozen=True)
class ResultsLocation:
    """A results store: ``path`` for a SQLite file, ``url`` for PostgreSQL (exactly one is set)."""

    path: Path | None = None
    url: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.url is not None

    @property
    def name(self) -> str:
        """A short name (the file's, or the database's) for titles and file names."""
        if self.path is not None:
            return self.path.name
        return (urlsplit(self.url).path.lstrip("/") or "postgres").replace("/", "_")

    def exists(self) -> bool:
        """A file that is there; a server is only known to be there once connected (True)."""
        return self.path.exists() if self.path is not None else True

    def report_path(self) -> Path:
        """Where ``report`` writes by default: beside the file, or in the lab home for a server."""
        if self.path is not None:
            return self.path.with_suffix(".html")
        return default_results_db().parent / f"{self.name}.html"

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else redact(self.url)


def results_location(value: "str | Path | ResultsLocation | None") -> ResultsLocation:
    """``--results`` as given (a path, a postgresql:// URL, or nothing: the default file)."""
    if isinstance(value, ResultsLocation):
        return value
    if value is None or value == "":
        return ResultsLocation(path=default_results_db())
    text = str(value)
    if isinstance(value, str) and _scheme(text) in URL_SCHEMES:
        return ResultsLocation(url=text)
    if isinstance(value, Path) and _scheme(text) in URL_SCHEMES:
        # Path("postgresql://h/db") already collapsed the "//": the caller parsed --results with
        # type=Path; refuse rather than connect somewhere else or create a file named like a URL
        raise UserError(f"--results {text}: a PostgreSQL URL was read as a file path",
                        hint="parse --results with mshare_lab.results.location.results_location")
    return ResultsLocation(path=Path(text))


def existing(location: ResultsLocation) -> ResultsLocation:
    """For readers: a missing file is an error, not a new empty database."""
    if not location.exists():
        raise NotFoundError(f"no results file at {location}",
                            hint="run a matrix first ('mshare-lab run MATRIX') or pass --results FILE|postgresql://...")
    return location


def redact(url: str) -> str:
    """The URL without its password (in the user part or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        if ":" in user:
            user = user.split(":", 1)[0] + ":" + REDACTED
        netloc = f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if k.lower() == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def server_of(url: str) -> str:
    """``host port N`` of a URL, for error messages (libpq's defaults when absent)."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    host = parts.hostname or params.get("host") or "localhost (unix socket)"
    try:
        port = parts.port or params.get("port") or 5432
    except ValueError:
        port = "?"
    return f"{host} port {port}"


def _scheme(text: str) -> str:
    head, sep, _ = text.partition(":")
    return head.lower() if sep else ""
