"""How long `mshare-lab report` takes and how big the page is, for a results store.

    .venv/bin/python benchmarks/report_build.py RESULTS.sqlite [--repeat 3]

Prints the gather / figures+page / total seconds (best of the repeats), the HTML size
and each figure's PNG size. The figures are most of both: matplotlib's rendering and
their base64 data URIs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from mshare_lab.report import data, page
from mshare_lab.results.store import ResultStore
from mshare_lab.units import format_seconds, format_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    best = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        with ResultStore(args.results) as store:
            gathered = data.gather(store)
        t1 = time.perf_counter()
        built = page.build(gathered, out_dir=Path(tempfile.gettempdir()))
        html = page.render(built)
        t2 = time.perf_counter()
        if best is None or t2 - t0 < best[2]:
            best = (t1 - t0, t2 - t1, t2 - t0, html, built)
    gather_s, build_s, total_s, html, built = best
    print(f"runs            {len(gathered.runs)}")
    print(f"gather          {format_seconds(gather_s)}")
    print(f"figures + page  {format_seconds(build_s)}")
    print(f"total           {format_seconds(total_s)} (best of {args.repeat})")
    print(f"html            {format_size(len(html.encode()))}")
    for figure in built.figures:
        size = format_size(len(figure.image) * 3 // 4) if figure.image else f"none ({figure.note[:40]}...)"
        print(f"  {figure.key:<12}  {size}")


if __name__ == "__main__":
    main()
