"""Helpers of the report tests: the matrix, chromium, and reading the report back
(sections, images and table cells, with the standard HTML parser)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import pytest

MATRIX = Path(__file__).parent / "matrix.yaml"


def require_chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run scripts/setup")
    return path

from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass
class Cell:
    metric: str
    value: str
    text: str = ""


class ReportHTML(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections: list[str] = []
        self.images: dict[str, list[str]] = {}       # section id -> img src
        self.rows: dict[str, list[Cell]] = {}        # run id -> metric cells
        self.urls: list[str] = []                    # every src and href
        self.tags: set[str] = set()
        self.notes: list[str] = []
        self.text: list[str] = []
        self._section = None
        self._run = None
        self._cell: Cell | None = None
        self._note = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "section":
            self._section = attrs.get("id")
            self.sections.append(self._section)
        elif tag == "img":
            self.images.setdefault(self._section, []).append(attrs["src"])
        elif tag == "tr" and "data-run" in attrs:
            self._run = attrs["data-run"]
            self.rows[self._run] = []
        elif tag == "td" and "data-metric" in attrs and self._run:
            self._cell = Cell(attrs["data-metric"], attrs.get("data-value", ""))
            self.rows[self._run].append(self._cell)
        elif tag == "p" and "note" in (attrs.get("class") or ""):
            self._note = []

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._run = None
        elif tag == "p" and self._note is not None:
            self.notes.append(" ".join("".join(self._note).split()))
            self._note = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.text += data.strip()
        if self._note is not None:
            self._note.append(data)


def parse(html: str) -> ReportHTML:
    reader = ReportHTML()
    reader.feed(html)
    reader.close()
    return reader


def png_of(data_uri: str):
    """The PIL image a data:image/png;base64 URI holds."""
    from PIL import Image
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix), data_uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix):])))


def variety(image) -> tuple[int, float]:
    """(distinct colours, share of pixels that are not the background white)."""
    rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20) or []
    total = rgb.width * rgb.height
    white = sum(n for n, c in colours if min(c) >= 250)
    return len(colours), 1 - white / total
